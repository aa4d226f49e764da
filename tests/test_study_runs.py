"""The study's runner against a fake `dvc` (a script that keeps its experiments and queue in a JSON file):
queueing, failures and their reasons, a driver that died while DVC still held its seeds, and Ctrl-C while
queueing; then the seed folders' validation before an aggregate. Seconds, no training."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fashion_compare import study, study_runs
from fashion_compare.errors import PipelineError

FAKE_DVC = textwrap.dedent("""\
    #!{python}
    # A fake dvc: experiments and the queue in state.json; a seed in FAIL fails in its prepare stage.
    import json, os, sys
    path = os.path.join(os.path.dirname(__file__), "state.json")
    state = json.load(open(path)) if os.path.exists(path) else {{"queue": {{}}, "finished": {{}}, "runs": {{}},
                                                                  "calls": [], "workers": 0}}
    args = sys.argv[1:]
    state["calls"].append(" ".join(args))
    fail = os.environ.get("FAKE_DVC_FAIL", "").split()
    output = "Running stage 'prepare':\\nerror: data/raw/train-images-idx3-ubyte.gz: not found; run make data\\n" \\
             "ERROR: failed to reproduce 'prepare': failed to run: python stages/prepare.py, exited with 1"
    def seed_of(args):
        return args[args.index("-S") + 1].split("=")[1]
    def finish(name, seed):
        state["runs"][name] = state["runs"].get(name, 0) + 1
        if seed in fail:
            return False
        state["finished"][name] = seed
        return True
    code = 0
    if args[:2] == ["exp", "remove"]:
        for name in args[2:]:
            state["finished"].pop(name, None)
            state["queue"].pop(name, None)
    elif args[:2] == ["exp", "run"] and "--temp" in args:
        if not finish(args[args.index("-n") + 1], seed_of(args)):
            print(output)
            code = 1
    elif args[:2] == ["exp", "run"] and "--queue" in args:
        state["queue"][args[args.index("-n") + 1]] = ["Queued", seed_of(args)]
    elif args[:2] == ["queue", "start"]:  # the workers run every queued experiment at once
        for name, (status, seed) in state["queue"].items():
            if status == "Queued":
                state["queue"][name] = ["Success" if finish(name, seed) else "Failed", seed]
    elif args[:2] == ["queue", "status"]:
        for name, (status, seed) in state["queue"].items():
            print(f"abc1234  {{name}}  03:54 PM   {{status}}")
        print(f"\\nWorker status: {{state['workers']}} active, 0 idle")
    elif args[:2] == ["queue", "logs"]:
        print(output)
    elif args[:2] == ["queue", "remove"] or args[:2] == ["queue", "kill"]:
        for name in args[2:]:
            state["queue"].pop(name, None)
    json.dump(state, open(path, "w"))
    sys.exit(code)
    """)

PARAMS = {"seed": 42, "lr": 0.001, "epochs": 1, "study": {"seeds": [1, 2, 3], "jobs": 1}}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A workspace (a git repository) whose dvc is the fake; collecting a seed writes a small result folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dvc = bin_dir / "dvc"
    dvc.write_text(FAKE_DVC.format(python=sys.executable))
    dvc.chmod(0o755)
    workspace = tmp_path / "repo"
    workspace.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
    monkeypatch.chdir(workspace)
    monkeypatch.setattr(study_runs, "DVC", dvc)
    monkeypatch.setattr(study_runs, "POLL_SECONDS", 0)
    monkeypatch.setattr(study_runs, "code_fingerprint", lambda rev=None, root=None: "fake-code")
    state = lambda: json.loads((bin_dir / "state.json").read_text())  # noqa: E731
    monkeypatch.setattr(study_runs, "finished_experiments", lambda names: {
        name: [f"refs/exps/ab/cdef/{name}"] for name in state()["finished"] if name in names})
    monkeypatch.setattr(study_runs.SeedRunner, "matching_ref", lambda self, refs: refs[0] if refs else None)
    monkeypatch.setattr(study_runs, "collect", lambda seed, ref, fingerprint: write_seed(seed, fingerprint))
    return state


def save_state(state: dict):
    """What the fake dvc holds from now on (as if its workers had changed it)."""
    (study_runs.DVC.parent / "state.json").write_text(json.dumps(state))


def write_seed(seed, fingerprint="fake-code", labels=(0, 1, 2, 3), resnet=(0, 1, 2, 3), cnn=(0, 1, 2, 0)):
    """A seed folder as collect writes it (predictions, params, run.json with the checksum, headline)."""
    folder = study_runs.seed_dir(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{i},{label},{r},{c}\r\n" for i, (label, r, c) in enumerate(zip(labels, resnet, cnn)))
    (folder / "predictions.csv").write_text("image,label,resnet,cnn\r\n" + rows)
    (folder / "params.yaml").write_text(json.dumps({**PARAMS, "seed": seed}))
    (folder / "headline.json").write_text(json.dumps({"resnet": {"test_accuracy": 1.0},
                                                      "cnn": {"test_accuracy": 0.75}, "accuracy_gain": 0.25}))
    (folder / "run.json").write_text(json.dumps({
        "seed": seed, "code": fingerprint, "train_seconds": {"resnet": 1, "cnn": 1},
        "mlflow_run_ids": {}, "predictions_sha256": study_runs.sha256(folder / "predictions.csv")}))
    (folder / "failed.json").unlink(missing_ok=True)
    return folder


def test_one_at_a_time_runs_each_missing_seed_once_and_resumes_with_the_rest(fake, capsys):
    write_seed(1)  # done already
    assert study_runs.run_seeds([1, 2, 3], 1, PARAMS) == {}
    assert fake()["runs"] == {"study-seed-2": 1, "study-seed-3": 1}
    assert "seed 1: done already" in capsys.readouterr().out
    assert study_runs.run_seeds([1, 2, 3], 1, PARAMS) == {}  # a rerun trains nothing
    assert fake()["runs"] == {"study-seed-2": 1, "study-seed-3": 1}


def test_a_failed_seed_keeps_the_stages_error_line_and_its_whole_log(fake, monkeypatch):
    monkeypatch.setenv("FAKE_DVC_FAIL", "2")
    failed = study_runs.run_seeds([1, 2], 1, PARAMS)
    why = failed[2]
    assert why.startswith("error: data/raw/train-images-idx3-ubyte.gz: not found; run make data")
    assert "logs/study/seed-2.log" in why
    assert "failed to reproduce 'prepare'" in Path("logs/study/seed-2.log").read_text()
    recorded = json.loads(Path("metrics/study/seeds/2/failed.json").read_text())
    assert recorded["error"] == why and recorded["log"] == "logs/study/seed-2.log"
    monkeypatch.delenv("FAKE_DVC_FAIL")
    assert study_runs.run_seeds([1, 2], 1, PARAMS) == {}  # retried: failed.json cleared by the success
    assert not Path("metrics/study/seeds/2/failed.json").exists() and Path("metrics/study/seeds/2/run.json").exists()


def test_queued_seeds_are_followed_to_the_end_and_failures_read_from_the_queue_log(fake, monkeypatch):
    monkeypatch.setenv("FAKE_DVC_FAIL", "3")
    failed = study_runs.run_seeds([1, 2, 3, 4], 2, PARAMS)
    assert list(failed) == [3] and failed[3].startswith("error: data/raw/")
    calls = fake()["calls"]
    assert sum(call.startswith("exp run --queue") for call in calls) == 4 and "queue start -j 2" in calls
    assert "queue stop" in calls and all(study_runs.seed_dir(seed).joinpath("run.json").exists() for seed in (1, 2, 4))


def test_a_rerun_adopts_what_dvc_holds_after_the_driver_died(fake, monkeypatch):
    """The driver was killed while DVC's workers trained: seed 1 finished in DVC but was never collected, seed 2
    is still running with its worker alive, seed 3 failed. The rerun collects 1, queues 3 beside 2 (jobs 2) and
    follows both, never training 2 itself."""
    study_runs.dvc("exp", "run", "--temp", "-S", "seed=1", "-n", "study-seed-1")  # finished, not collected
    study_runs.dvc("exp", "run", "--queue", "-S", "seed=2", "-n", "study-seed-2")
    monkeypatch.setenv("FAKE_DVC_FAIL", "3")
    study_runs.dvc("exp", "run", "--queue", "-S", "seed=3", "-n", "study-seed-3")
    state = fake()
    state["queue"]["study-seed-2"] = ["Running", "2"]
    state["queue"]["study-seed-3"] = ["Failed", "3"]
    state["workers"] = 2
    save_state(state)
    Path(".dvc/tmp/exps/standalone/tmpabc").mkdir(parents=True)  # an interrupted --temp run's workspace
    monkeypatch.delenv("FAKE_DVC_FAIL")
    monkeypatch.setattr(study_runs, "live_experiments", lambda: {"study-seed-2"})  # its process is alive

    def worker_finishes_seed_2(*args, **kwargs):  # the live worker: seed 2 succeeds while we wait
        state = fake()
        state["queue"]["study-seed-2"] = ["Success", "2"]
        state["finished"]["study-seed-2"] = "2"
        save_state(state)
    monkeypatch.setattr(study_runs.time, "sleep", worker_finishes_seed_2)

    assert study_runs.run_seeds([1, 2, 3], 2, PARAMS) == {}
    runs, calls = fake()["runs"], fake()["calls"]
    assert runs == {"study-seed-1": 1, "study-seed-3": 1}  # seed 1 not retrained, seed 2 never by us, 3 rerun
    assert "exp remove study-seed-3" in calls and not any("remove study-seed-1" in c or "remove study-seed-2" in c
                                                          for c in calls)
    assert calls.count("exp run --queue -S seed=3 -n study-seed-3") == 2  # queued again, to run beside seed 2
    assert not any(call.startswith("queue kill") or "--temp -S seed=3" in call for call in calls)
    assert all(study_runs.seed_dir(seed).joinpath("run.json").exists() for seed in (1, 2, 3))
    assert not Path(".dvc/tmp/exps/standalone").exists()


def test_a_seed_dvc_shows_running_with_no_process_left_is_run_again(fake, monkeypatch, capsys):
    """The session that ran DVC's workers ended while seed 2 trained: DVC shows it Running for good
    (treeverse/dvc#8702). Seed 3's worker is alive. The rerun kills seed 2 the DVC way and trains it again, and
    waits for seed 3."""
    for seed in (2, 3):
        study_runs.dvc("exp", "run", "--queue", "-S", f"seed={seed}", "-n", f"study-seed-{seed}")
    state = fake()
    state["queue"] = {"study-seed-2": ["Running", "2"], "study-seed-3": ["Running", "3"]}
    state["workers"] = 1
    save_state(state)
    monkeypatch.setattr(study_runs, "live_experiments", lambda: {"study-seed-3"})

    def worker_finishes_seed_3(*args, **kwargs):
        state = fake()
        if state["queue"].get("study-seed-3", [None])[0] == "Running":
            state["queue"]["study-seed-3"] = ["Success", "3"]
            state["finished"]["study-seed-3"] = "3"
            save_state(state)
    monkeypatch.setattr(study_runs.time, "sleep", worker_finishes_seed_3)

    assert study_runs.run_seeds([2, 3], 2, PARAMS) == {}
    calls = fake()["calls"]
    assert "queue kill study-seed-2" in calls and "exp remove study-seed-2" in calls
    assert not any("study-seed-3" in call for call in calls if call.startswith(("queue kill", "exp remove")))
    assert fake()["runs"] == {"study-seed-2": 1}  # seed 3 trained by its live worker, not by us
    assert "seed 2: DVC shows it running, but no process runs it" in capsys.readouterr().out
    assert all(study_runs.seed_dir(seed).joinpath("run.json").exists() for seed in (2, 3))


def test_an_entry_is_abandoned_only_when_every_active_worker_has_its_process(monkeypatch):
    """A worker that has just taken its experiment sets it up (a copy of the repository) before its process
    starts: while some active worker has no process, nothing counts as abandoned."""
    running = {"study-seed-1": "Running", "study-seed-2": "Running", "study-seed-3": "Queued"}
    monkeypatch.setattr(study_runs, "POLL_SECONDS", 0)
    for live, workers, abandoned in ((set(), 2, set()),  # both workers still setting up
                                     (set(), 0, {"study-seed-1", "study-seed-2"}),  # no worker left at all
                                     ({"study-seed-2"}, 1, {"study-seed-1"}),  # the one worker runs seed 2
                                     ({"study-seed-2"}, 2, set()),  # the other worker may be setting seed 1 up
                                     ({"study-seed-1", "study-seed-2"}, 2, set())):
        monkeypatch.setattr(study_runs, "live_experiments", lambda live=live: live)
        assert study_runs.abandoned_experiments(running, workers) == abandoned, (live, workers)


def test_a_seed_whose_worker_dies_while_followed_is_named_as_failed(fake, monkeypatch):
    """Both seeds queued and taken by the workers; seed 2's worker then dies (DVC keeps it Running). The driver
    collects seed 1, names seed 2 in the failures (make study reruns it) and does not wait for it forever."""
    def workers_take_both(*args, **kwargs):
        state = fake()
        state["queue"] = {"study-seed-1": ["Success", "1"], "study-seed-2": ["Running", "2"]}
        state["finished"]["study-seed-1"] = "1"
        state["workers"] = 0  # none active: seed 1's worker is idle, seed 2's gone
        save_state(state)
    monkeypatch.setattr(study_runs.SeedRunner, "start_workers", lambda self, jobs: workers_take_both())
    monkeypatch.setattr(study_runs, "live_experiments", lambda: set())
    failed = study_runs.run_seeds([1, 2], 2, PARAMS)
    assert list(failed) == [2] and "DVC showed study-seed-2 running, but no process ran it" in failed[2]
    assert "queue kill study-seed-2" in fake()["calls"]
    assert study_runs.seed_dir(1).joinpath("run.json").exists()
    assert json.loads((study_runs.seed_dir(2) / "failed.json").read_text())["error"] == failed[2]


def test_live_experiments_are_read_from_this_repositorys_exec_run_processes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    infos = {}
    for where, name in (("repo", "study-seed-7"), ("other-repo", "study-seed-8")):
        infos[name] = tmp_path / where / ".dvc/tmp/exps/run/abc/abc.run"
        infos[name].parent.mkdir(parents=True)
        infos[name].write_text(json.dumps({"name": name, "status": 2}))
    monkeypatch.chdir(tmp_path / "repo")
    listing = "".join(f"/venv/bin/python /venv/bin/dvc exp exec-run --infofile {path}\n" for path in (
        infos["study-seed-7"], infos["study-seed-8"], tmp_path / "repo/.dvc/tmp/exps/run/gone/gone.run"))
    monkeypatch.setattr(study_runs.subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(
        args, 0, stdout="ARGS\n" + listing + "python stages/train.py resnet\n"))
    assert study_runs.live_experiments() == {"study-seed-7"}  # not another repository's, not a vanished one


def test_ctrl_c_while_queueing_leaves_nothing_queued(fake, monkeypatch):
    real_dvc = study_runs.dvc

    def interrupted_at_the_second(*args, **kwargs):
        if args[:3] == ("exp", "run", "--queue") and "seed=2" in args:
            raise KeyboardInterrupt
        return real_dvc(*args, **kwargs)
    monkeypatch.setattr(study_runs, "dvc", interrupted_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        study_runs.run_seeds([1, 2, 3, 4], 2, PARAMS)
    assert fake()["queue"] == {} and "queue remove study-seed-1" in fake()["calls"]


@pytest.mark.parametrize("seeds, jobs, message", [
    ([42, 42], 1, "--seeds: seed 42 appears more than once"),
    ([1, -1], 1, "--seeds: -1 is negative"),
    ([1], 0, "--jobs 0: at least 1 seed at a time"),
    ([1], -1, "--jobs -1: at least 1 seed at a time"),
])
def test_arguments_are_checked_before_any_work(fake, seeds, jobs, message):
    with pytest.raises(PipelineError, match=message):
        study_runs.run_seeds(seeds, jobs, PARAMS)
    assert not (study_runs.DVC.parent / "state.json").exists()  # dvc never called


# ------------------------------------------------------------------------- seed folders, validated

def refused(seed, match):
    with pytest.raises(PipelineError, match=match) as error:
        study_runs.load_study([1, seed])
    assert "\n" not in str(error.value)


def rewrite(seed, old, new, keep_checksum=False):
    path = study_runs.seed_dir(seed) / "predictions.csv"
    path.write_text(path.read_text().replace(old, new, 1))
    if keep_checksum:  # as if collected like this: only the content checks can catch it
        info = json.loads((path.parent / "run.json").read_text())
        info["predictions_sha256"] = study_runs.sha256(path)
        (path.parent / "run.json").write_text(json.dumps(info))


def test_every_file_of_a_seed_is_validated_before_the_aggregate(fake):
    write_seed(1)
    write_seed(2)
    runs, failed = study_runs.load_study([1, 2])
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
    (study_runs.seed_dir(2) / "params.yaml").write_text("seed: [1,\n")
    refused(2, "params.yaml: not readable YAML")
    write_seed(2)
    (study_runs.seed_dir(2) / "run.json").unlink()
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
    monkeypatch.setenv("FAKE_DVC_FAIL", "3")
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


def test_an_unreachable_dask_scheduler_is_one_line_naming_it_within_seconds(fake, monkeypatch):
    import socket
    import time

    from fashion_compare import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "2s")  # the project's is 10 s
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    started = time.perf_counter()
    with pytest.raises(PipelineError) as error:
        study_runs.run_seeds([1], 1, PARAMS, cluster=address)
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert message.startswith(f"Dask scheduler at {address}: cannot connect (") and "\n" not in message
    assert not (study_runs.DVC.parent / "state.json").exists()  # nothing sent anywhere, DVC not called


def test_a_rerun_starts_the_workers_missing_for_the_queued_seeds(fake):
    """DVC still holds two queued seeds but only one worker is left (a worker can exit early): the rerun starts
    workers up to the jobs asked for, and follows both seeds to the end."""
    for seed in (1, 2):
        study_runs.dvc("exp", "run", "--queue", "-S", f"seed={seed}", "-n", f"study-seed-{seed}")
    state = fake()
    state["workers"] = 1
    save_state(state)
    assert study_runs.run_seeds([1, 2], 2, PARAMS) == {}
    assert "queue start -j 2" in fake()["calls"] and fake()["runs"] == {"study-seed-1": 1, "study-seed-2": 1}
