"""The study's driver against a fake engine (each task's outcome made up at once): missing seeds run once,
failures keep their reason and log, what a worker raised, other code, Ctrl-C; then the seed folders'
validation before an aggregate, and the command's one-line errors. Seconds, no training, no Dask."""

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_compare import (
    dvc_remote,
    engine,
    results,
    seed_folders,
    seed_task,
    sessions,
    study,
    study_aggregate,
    study_runs,
    tools,
)
from fashion_compare.errors import PipelineError
from fashion_compare.seed_folders import REFERENCE

PARAMS = {"seed": 42, "lr": 0.001, "epochs": 1, "study": {"seeds": [1, 2, 3], "jobs": 1}}
STAGE_FAILURE = ("Running stage 'prepare':\nerror: data/raw/train-images-idx3-ubyte.gz: not found; run make data\n"
                 "ERROR: failed to reproduce 'prepare': failed to run: python stages/prepare.py, exited with 1")


def seed_files(seed, labels=(0, 1, 2, 3), resnet=(0, 1, 2, 3), cnn=(0, 1, 2, 0)) -> dict:
    """A seed folder's files as a task returns them (predictions, params, run.json with the checksum, headline)."""
    rows = "".join(f"{i},{label},{r},{c}\r\n" for i, (label, r, c) in enumerate(zip(labels, resnet, cnn)))
    predictions = "image,label,resnet,cnn\r\n" + rows
    import hashlib

    return {"predictions.csv": predictions, "params.yaml": json.dumps({**PARAMS, "seed": seed}),
            "headline.json": json.dumps({"baseline": "cnn", "models": {"resnet": {"test_accuracy": 1.0},
                                                                       "cnn": {"test_accuracy": 0.75}},
                                         "contenders": {"resnet": {"accuracy_gain": 0.25}}}),
            "run.json": results.to_json(results.SeedRunFile(
                seed=seed, experiment=f"study-seed-{seed}", rev="0" * 40, worker="tcp://127.0.0.1:1", baseline=None,
                code="fake-code", cpu="a CPU", cpu_kind=results.CpuKind("unknown", "", "", "unknown", "a CPU"),
                threads={"resnet": 1, "cnn": 1}, train_seconds={"resnet": 1, "cnn": 1}, mlflow_run_ids={},
                predictions_sha256=hashlib.sha256(predictions.encode()).hexdigest()))}


def write_seed(seed, **predictions):
    """A seed folder as the driver writes it."""
    folder = REFERENCE.seed_dir(seed)
    seed_folders.write_seed_folder(folder, seed_files(seed, **predictions))
    return folder


class FakeEngine:
    """engine.open_cluster and engine.run_tasks made up: each task ends at once, as `outcomes` says (a seed in
    `fail` fails in its prepare stage, one in `raises` raises on its worker, one in `other_code` ran other
    code); `interrupt_after` seeds, Ctrl-C."""

    def __init__(self):
        self.ran, self.fail, self.raises, self.other_code, self.interrupt_after = [], set(), set(), set(), None
        self.clusters = []

    @contextlib.contextmanager
    def open_cluster(self, address, jobs):
        self.clusters.append((address, jobs))
        yield "client"

    def run_tasks(self, client, function, tasks, on_done, key):
        for task in tasks:
            if self.interrupt_after is not None and len(self.ran) == self.interrupt_after:
                raise KeyboardInterrupt
            self.ran.append(task.seed)
            if task.seed in self.raises:
                on_done(task, RuntimeError(f"seed {task.seed}: git clone failed: fatal: no such repository"))
            elif task.seed in self.fail:
                on_done(task, seed_task.SeedOutcome(task.seed, "worker-1", error=STAGE_FAILURE.splitlines()[1],
                                                 log=STAGE_FAILURE))
            else:
                code = "older-code" if task.seed in self.other_code else "fake-code"
                on_done(task, seed_task.SeedOutcome(task.seed, "worker-1", code, seed_files(task.seed)))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A workspace (a git repository with a commit) whose engine is the fake."""
    workspace = tmp_path / "repo"
    workspace.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=workspace, check=True)
    monkeypatch.chdir(workspace)
    fake_engine = FakeEngine()
    monkeypatch.setattr(engine, "open_cluster", fake_engine.open_cluster)
    monkeypatch.setattr(engine, "run_tasks", fake_engine.run_tasks)
    monkeypatch.setattr(engine, "local_task_settings", lambda jobs: {"origin": ".", "workspace": str(workspace),
                                                                      "mlflow_uri": None, "threads": 1})
    monkeypatch.setattr(study_runs, "code_fingerprint", lambda: "fake-code")
    return fake_engine


def test_each_missing_seed_runs_once_and_a_rerun_runs_none(fake, capsys):
    write_seed(2)
    assert study_runs.run_seeds(REFERENCE, [1, 2, 3], 2, PARAMS) == {}
    assert fake.ran == [1, 3] and fake.clusters == [(None, 2)]
    out = capsys.readouterr().out
    assert "seed 2: done already" in out and "seed 1: finished on worker-1" in out
    assert "gain over cnn, points: resnet +25.00" in out
    assert study_runs.run_seeds(REFERENCE, [1, 2, 3], 2, PARAMS) == {} and fake.ran == [1, 3]
    assert len(fake.clusters) == 1  # nothing to run: no cluster started


def test_each_make_study_that_trains_adds_its_wall_time_beside_its_recipes_seeds(fake):
    tuned = seed_folders.Recipe("tuned", {})
    study_runs.run_seeds(REFERENCE, [1], 2, PARAMS)
    study_runs.run_seeds(REFERENCE, [1, 2, 3], 2, PARAMS)
    study_runs.run_seeds(REFERENCE, [1, 2, 3], 2, PARAMS)  # nothing to train: no session
    study_runs.run_seeds(tuned, [1], 1, PARAMS)
    recorded = sessions.load_sessions(REFERENCE.sessions_file, "make study")
    assert REFERENCE.sessions_file == Path("metrics/study/sessions.json")
    assert [s.jobs for s in recorded] == [1, 2] and all(s.wall_seconds >= 0 and s.cpu for s in recorded)
    assert [s.jobs for s in sessions.load_sessions(tuned.sessions_file, "make study")] == [1]
    assert tuned.sessions_file == Path("metrics/study_tuned/sessions.json")


def test_a_failed_seed_keeps_the_stages_error_line_and_its_whole_log(fake):
    fake.fail = {2}
    failed = study_runs.run_seeds(REFERENCE, [1, 2], 1, PARAMS)
    assert failed[2].startswith("error: data/raw/train-images-idx3-ubyte.gz: not found; run make data (whole output:")
    record = json.loads((REFERENCE.seed_dir(2) / "failed.json").read_text())
    assert record["error"] == failed[2] and "exited with 1" in Path(record["log"]).read_text()
    assert (REFERENCE.seed_dir(1) / "predictions.csv").is_file()
    fake.fail = set()
    assert study_runs.run_seeds(REFERENCE, [1, 2], 1, PARAMS) == {} and fake.ran == [1, 2, 2]
    assert not (REFERENCE.seed_dir(2) / "failed.json").exists()


def test_what_a_worker_raised_and_results_of_other_code_are_failures_in_one_line(fake):
    fake.raises, fake.other_code = {1}, {2}
    failed = study_runs.run_seeds(REFERENCE, [1, 2], 1, PARAMS)
    assert failed[1].startswith("error: seed 1: seed 1: git clone failed: fatal: no such repository")
    assert failed[2].startswith("error: seed 2 ran code older-code on worker-1, not this study's fake-code")
    assert not (REFERENCE.seed_dir(2) / "predictions.csv").exists()


def test_ctrl_c_says_in_one_line_what_was_kept(fake, capsys):
    fake.interrupt_after = 1
    with pytest.raises(KeyboardInterrupt):
        study_runs.run_seeds(REFERENCE, [1, 2, 3], 1, PARAMS)
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("interrupted: finished seeds kept in metrics/study/seeds; seeds 2, 3 left, each to "
                              "resume from its last finished epoch")


def test_each_tuned_recipe_has_its_own_seed_folders_and_sets_each_models_recipe(fake, tmp_path):
    tuned_file = seed_folders.TUNED_RECIPE_FILES["tuned"]
    tuned_file.parent.mkdir(parents=True)
    tuned_file.write_text("resnet: {lr: 0.002, augment: flip}\ncnn: {batch_size: 64}\n")
    tuned = seed_folders.load_recipe("tuned")
    assert tuned.seeds_dir == Path("metrics/study_tuned/seeds") and tuned.study_file == Path("metrics/study_tuned.json")
    assert tuned.set_options() == ["-S", "models.cnn.recipe.batch_size=64", "-S", 'models.resnet.recipe.augment="flip"',
                                   "-S", "models.resnet.recipe.lr=0.002"]
    assert tuned.apply(PARAMS)["models"]["resnet"] == {"recipe": {"lr": 0.002, "augment": "flip"}}
    assert tuned.experiment_name(4) == "study-tuned-seed-4" and REFERENCE.experiment_name(4) == "study-seed-4"
    assert tuned.max_planned_seeds == seed_folders.TUNED_MAX_SEEDS
    with pytest.raises(PipelineError, match="--recipe best: unknown; use reference, tuned, tuned_subset"):
        seed_folders.load_recipe("best")
    with pytest.raises(PipelineError, match=r"^metrics/tuning/recipe.yaml: no chosen recipe for resnet_small: its "
                                            r"search has not finished \(make tune MODELS=resnet_small goes on"):
        seed_folders.load_recipe("tuned", ("resnet_small", "cnn"))
    assert seed_folders.load_recipe("tuned", ("resnet", "cnn")) == tuned
    tuned_file.unlink()
    with pytest.raises(PipelineError, match="recipe.yaml: not found; run `make tune` until its search finishes"):
        seed_folders.load_recipe("tuned")
    with pytest.raises(PipelineError, match=r"tuning_subset/recipe.yaml: not found; restore it \(git checkout"):
        seed_folders.load_recipe("tuned_subset")
    subset_file = seed_folders.TUNED_RECIPE_FILES["tuned_subset"]
    subset_file.parent.mkdir(parents=True)
    subset_file.write_text("cnn: {lr: 0.0016}\n")
    subset = seed_folders.load_recipe("tuned_subset")
    assert subset.seeds_dir == Path("metrics/study_tuned_subset/seeds") and subset.overrides == {
        "models.cnn.recipe.lr": 0.0016}
    assert subset.plots_dir == Path("plots/study_tuned_subset") and subset.max_planned_seeds == 10


@pytest.mark.parametrize("seeds, jobs, message", [
    ([42, 42], 1, "--seeds: seed 42 appears more than once"),
    ([1, -1], 1, "--seeds: -1 is negative"),
    ([1], 0, "--jobs 0: at least 1 seed at a time"),
    ([1], -1, "--jobs -1: at least 1 seed at a time"),
])
def test_arguments_are_checked_before_any_work(fake, seeds, jobs, message):
    with pytest.raises(PipelineError, match=message):
        study_runs.run_seeds(REFERENCE, seeds, jobs, PARAMS)
    assert fake.clusters == []


# ------------------------------------------------------------------------- seed folders, validated

def refused(seed, match):
    with pytest.raises(PipelineError, match=match) as error:
        study_aggregate.load_study(REFERENCE, [1, seed])
    assert "\n" not in str(error.value)


def rewrite(seed, old, new, keep_checksum=False):
    path = REFERENCE.seed_dir(seed) / "predictions.csv"
    path.write_text(path.read_text().replace(old, new, 1))
    if keep_checksum:  # as if collected like this: only the content checks can catch it
        info = json.loads((path.parent / "run.json").read_text())
        info["predictions_sha256"] = study_aggregate.sha256(path)
        (path.parent / "run.json").write_text(json.dumps(info))


def test_every_file_of_a_seed_is_validated_before_the_aggregate(fake):
    write_seed(1)
    write_seed(2)
    runs, failed = study_aggregate.load_study(REFERENCE, [1, 2])
    assert [run.seed for run in runs] == [1, 2] and failed == {}
    cases = [
        ("1,1,1,1", "1,1,x,1", True, r"predictions.csv: row 3: \['1', '1', 'x', '1'\] is not 4 integers"),
        ("1,1,1,1", "1,1,,1", True, "row 3: .* is not 4 integers"),
        ("1,1,1,1", "1,1,1,1,5", True, "row 3: .* is not 4 integers"),  # a value too many
        ("image,label,resnet,cnn", "image,label,resnet18,cnn", True, "header is"),
        ("1,1,1,1", "1,1,12,1", True, "row 3: a class outside 0-9"),
        ("1,1,1,1", "7,1,1,1", True, "row 3: image 7, expected 1"),
        ("1,1,1,1", "1,1,2,1", False, "does not match the checksum run.json recorded"),  # an in-range edit
        ("1,1,1,1", "1,2,1,1", True, "its labels differ from seed 1's"),
    ]
    for old, new, keep_checksum, match in cases:
        write_seed(2)
        rewrite(2, old, new, keep_checksum)
        refused(2, match)
    write_seed(2)
    (REFERENCE.seed_dir(2) / "params.yaml").write_text("seed: [1,\n")
    refused(2, "params.yaml: not readable YAML")
    write_seed(2)
    info = json.loads((REFERENCE.seed_dir(2) / "run.json").read_text())
    del info["code"]
    (REFERENCE.seed_dir(2) / "run.json").write_text(json.dumps(info))
    refused(2, r"run.json: not a SeedRunFile \(code: field required\); rerun seed 2 \(make study SEEDS=2\)")
    (REFERENCE.seed_dir(2) / "run.json").unlink()
    refused(2, r"run.json: not found; run seed 2 again \(make study SEEDS=2\) first")


# ------------------------------------------------------------------------- the driver, stages/study.py

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "stages/study.py"


def study_workspace(fake_state_dir=None):
    """The fake workspace made ready for stages/study.py: params.yaml (tracking off), a dvc.yaml."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    params["study"] = {"seeds": [1, 2, 3], "jobs": 1}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    Path("dvc.yaml").write_text((REPO / "dvc.yaml").read_text())


def drive(*args, cwd="."):
    return subprocess.run([sys.executable, str(STUDY), *args], cwd=cwd, capture_output=True, text=True)


def test_a_failed_seed_makes_the_study_exit_1_after_aggregating_what_finished(fake, monkeypatch, capsys):
    import importlib.util

    study_workspace()
    fake.fail = {3}
    monkeypatch.setattr(sys, "argv", ["study.py", "all"])
    monkeypatch.setattr(study, "ASO_SAMPLES", 100)
    spec = importlib.util.spec_from_file_location("study_stage", STUDY)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    with pytest.raises(SystemExit) as exit_:
        stage.main()
    assert exit_.value.code == 1
    result = json.loads(Path("metrics/study.json").read_text())
    assert result["seeds"] == [1, 2] and list(result["failed_seeds"]) == ["3"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith("seed 3 failed: error: data/raw/train-images-idx3-ubyte.gz: not found")
    assert err[-1].startswith("error: seeds 3 failed (their reasons above, in failed.json and logs/study/)")


def test_the_aggregate_checks_every_output_before_writing_any(fake):
    study_workspace()
    write_seed(1)
    write_seed(2, cnn=(0, 1, 0, 3))
    Path("metrics/study.json").write_text("the last good study")
    Path("plots").mkdir()
    Path("plots/study").write_text("a file where the figures' folder should be")
    result = drive("aggregate", "--seeds", "1", "2")
    assert result.returncode == 1 and result.stderr.startswith("error: plots/study: not writable (")
    assert result.stderr.count("\n") == 1 and Path("metrics/study.json").read_text() == "the last good study"
    assert not list(Path("metrics").glob(".study.json.*"))  # no temporary file left either


def test_a_second_driver_is_refused_with_the_pid_of_the_first_and_one_outside_the_root_is_told_where(fake):
    import os

    from fashion_compare import process

    study_workspace()
    with process.exclusive(".dvc/tmp/study.lock", "a seed study"):
        result = drive("run", "--seeds", "1")
    assert result.returncode == 1
    assert f"a seed study is already running in this workspace (PID {os.getpid()})" in result.stderr
    Path("sub").mkdir()
    result = drive("run", cwd="sub")
    assert result.returncode == 1 and "run the study from the repository root (where dvc.yaml is)" in result.stderr


def test_an_unreachable_dask_scheduler_is_one_line_naming_it_within_seconds(tmp_path, monkeypatch):
    import socket
    import time

    monkeypatch.setattr(engine, "CONNECT_TIMEOUT", "2s")  # the project's is 10 s
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    started = time.perf_counter()
    with pytest.raises(PipelineError) as error, engine.open_cluster(address, 1):
        pass
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert message.startswith(f"Dask scheduler at {address}: cannot connect (") and "\n" not in message


@pytest.mark.parametrize("cli, env, message", [
    (None, "not-an-address", "DASK_SCHEDULER_ADDRESS: 'not-an-address' is not a Dask scheduler address (missing port"),
    ("127.0.0.1:8786x", None, "--cluster 127.0.0.1:8786x: '127.0.0.1:8786x' is not a Dask scheduler address"),
    ("http://host:8787", None, "--cluster http://host:8787: 'http://host:8787' has scheme http://, not a Dask"),
])
def test_a_malformed_scheduler_address_is_one_line_naming_where_it_came_from(monkeypatch, cli, env, message):
    if env:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", env)
    with pytest.raises(PipelineError) as error:
        engine.scheduler_address(cli)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_no_address_is_a_local_cluster_and_a_good_one_is_kept(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert engine.scheduler_address(None) is None
    assert engine.scheduler_address("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"


def test_a_cluster_task_finds_a_remote_it_cannot_write_before_it_trains(tmp_path):
    """dvc_remote.check_remote_writable through DVC's own remote filesystem: a writable remote takes the probe and is
    left as it was; one that cannot be written (here: a path under a regular file, since root ignores file
    modes) is one error line naming the cause and the remedy."""
    repo = tmp_path / "clone"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(tools.DVC), "init", "-q"], cwd=repo, check=True)
    writable, blocked = tmp_path / "remote" / "not-made-yet", tmp_path / "a-file"
    blocked.write_text("not a folder")
    subprocess.run([str(tools.DVC), "remote", "add", "-d", "shared", str(writable)], cwd=repo, check=True)
    assert dvc_remote.check_remote_writable(repo) == "" and list(writable.iterdir()) == []  # made, as a push would
    subprocess.run([str(tools.DVC), "remote", "modify", "shared", "url", str(blocked / "remote")], cwd=repo,
                   check=True)
    why = dvc_remote.check_remote_writable(repo)
    assert why.startswith("error: the DVC remote cannot be written from this worker (") and "\n" not in why
    assert "give the workers write access" in why


def test_a_tuned_study_starts_with_its_pilot_then_keeps_its_committed_seeds_and_adds_those_named(
        tmp_path, monkeypatch):
    """The reference study's seeds are params.yaml's study.seeds (seeds named are a slice of them); a tuned
    study's are its pilot (the first five of study.seeds) until it has a committed aggregate, then that
    aggregate's, plus any named: the plan's extra seeds extend it, and `make study RECIPE=tuned` on a fresh
    clone trains nothing."""
    repo = Path(__file__).resolve().parent.parent
    tuned = seed_folders.Recipe("tuned", {"resnet.lr": 0.002})
    params_seeds = list(range(42, 52))
    monkeypatch.chdir(tmp_path)
    assert REFERENCE.study_seeds(params_seeds, named=(44, 60)) == params_seeds
    assert tuned.study_seeds(params_seeds) == [42, 43, 44, 45, 46]
    assert tuned.study_seeds(params_seeds, named=(44, 60, 61)) == [42, 43, 44, 45, 46, 60, 61]
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "study_tuned.json").write_text((repo / "metrics" / "study.json").read_text())
    committed = json.loads((repo / "metrics" / "study.json").read_text())["seeds"]
    assert tuned.study_seeds([1, 2]) == committed
    assert tuned.study_seeds([1, 2], named=(committed[0], 99)) == [*committed, 99]
    (tmp_path / "metrics" / "study_tuned.json").write_text("{}")
    with pytest.raises(PipelineError, match="study_tuned.json"):
        tuned.study_seeds(params_seeds)


def test_an_aggregate_that_changes_no_figure_rewrites_no_byte_and_a_changed_one_names_its_run(fake, monkeypatch):
    """`make study` on a fresh clone logs its own MLflow run but leaves every committed file as it was: study.json
    keeps the id of the run that first logged its figures. A study whose figures change names the new run."""
    from fashion_compare import records, tracking
    from fashion_compare.params import load_params

    study_workspace()
    write_seed(1)
    write_seed(2, cnn=(0, 1, 0, 3))
    monkeypatch.setattr(study, "ASO_SAMPLES", 100)
    run_ids, logged = iter(["run-1", "run-2", "run-3"]), []

    @contextlib.contextmanager
    def stage_run(tracker, stage, title, params):
        yield next(run_ids)

    monkeypatch.setattr(tracking, "stage_run", stage_run)
    monkeypatch.setattr(records, "log_study", lambda tracker, run_id, *rest: logged.append(run_id))
    params = load_params("params.yaml")

    def written():
        return {path: path.read_bytes() for folder in ("metrics", "plots") for path in Path(folder).rglob("*")
                if path.is_file() and "seeds" not in path.parts}

    study_aggregate.write_study(REFERENCE, [1, 2], params, "a tracker")
    first = written()
    study_aggregate.write_study(REFERENCE, [1, 2], params, "a tracker")
    assert written() == first and json.loads(first[Path("metrics/study.json")])["mlflow_run_id"] == "run-1"
    assert logged == ["run-1", "run-2"]  # the second aggregate's run is logged all the same
    write_seed(3, cnn=(0, 1, 2, 3))
    study_aggregate.write_study(REFERENCE, [1, 2, 3], params, "a tracker")
    assert json.loads(Path("metrics/study.json").read_text())["mlflow_run_id"] == "run-3"
