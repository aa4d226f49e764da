"""A team on one machine: clones stand for machines, sharing a DVC remote (a local folder, with
the run cache) and an MLflow tracking server on 127.0.0.1. Nobody retrains what was trained."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import (
    VENV_BIN,
    commit_all,
    copy_built,
    free_port,
    reset_to_head,
    run,
    set_params,
    tool_env,
    wait_until_up,
)

from fashion_compare.process import SHELLS

pytestmark = pytest.mark.e2e
MODELS = ("resnet", "cnn")


def stages_run(output):
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.mark.long
def test_second_clone_pulls_instead_of_retraining(tmp_path, built_pipeline, team_server):
    """Machine A has run the pipeline and pushes its outputs and run cache; machine B pulls them and retrains
    nothing; B's own change runs only the stages it touches, and its runs arrive at the team's server."""
    from mlflow.tracking import MlflowClient

    mlflow_server = team_server
    env = tool_env(MLFLOW_TRACKING_URI=mlflow_server)
    remote = tmp_path / "dvc-remote"
    first = copy_built(built_pipeline, (tmp_path / "machine-a").resolve())
    reset_to_head(first)
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], first)
    commit_all(first, "shared DVC remote")
    run(["dvc", "push", "--run-cache"], first, env=env)

    second = tmp_path / "machine-b"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    run(["dvc", "pull", "--run-cache"], second, env=env)
    result = run(["dvc", "repro"], second, env=env)
    assert stages_run(result.stdout) == set(), result.stdout
    for path in ("models/resnet.pt", "models/cnn.pt", "data/prepared/train.pt", "data/predictions/test.csv"):
        assert (second / path).read_bytes() == (first / path).read_bytes(), path

    set_params(second, models__cnn__recipe__lr=0.002)
    assert stages_run(run(["dvc", "repro"], second, env=env).stdout) == {"train_baseline", "evaluate", "compare"}

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("fashion-mnist")
    found = client.search_runs([experiment.experiment_id])
    by_stage = {}
    for found_run in found:
        by_stage.setdefault(found_run.data.tags.get("dvc.stage"), []).append(found_run)
    assert sorted(by_stage) == ["compare", "train_baseline"] and all(len(runs) == 1 for runs in by_stage.values())
    cnn_run = by_stage["train_baseline"][0]
    assert float(cnn_run.data.params["lr"]) == 0.002 and cnn_run.data.params["subset"] == "600"
    assert cnn_run.info.run_id == json.loads((second / "metrics/train/cnn.json").read_text())["mlflow_run_id"]
    assert "test_f1_Ankle_boot" in cnn_run.data.metrics  # evaluate logged into the training run
    assert all(r.info.status == "FINISHED" for r in found)
    for found_run in found:
        assert found_run.info.artifact_uri.startswith("mlflow-artifacts:"), found_run.info.artifact_uri
    # a model trained on machine B, fetched through the server from machine A
    model_uri = json.loads((second / "metrics/train/cnn.json").read_text())["mlflow_model_uri"]
    code = ("import json, sys, numpy as np, mlflow\n"
            f"model = mlflow.pyfunc.load_model({model_uri!r})\n"
            "print(model.predict(np.zeros((2, 1, 28, 28), dtype='float32')).shape)\n")
    assert run([sys.executable, "-c", code], first, env=env).stdout.strip().endswith("(2, 10)")
    figures = {a.path for a in client.list_artifacts(by_stage["compare"][0].info.run_id, "comparison")}
    assert "comparison/f1_difference_resnet.png" in figures


def test_served_model_answers_like_the_evaluate_stage(repo):
    """`mlflow models serve` on loopback; three test images POSTed; the same classes as evaluate found."""
    import torch

    reset_to_head(repo)  # the model, its MLflow run and the predictions of one and the same smoke run
    model_uri = json.loads((repo / "metrics/train/cnn.json").read_text())["mlflow_model_uri"]
    port = free_port()
    env = tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}")
    server = subprocess.Popen([str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
                               "local", "--host", "127.0.0.1", "--port", str(port)], cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        images = torch.load(repo / "data/prepared/test.pt", weights_only=True)["images"][:3]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": images.numpy().tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    logits = answer["predictions"]
    served = [max(range(10), key=row.__getitem__) for row in logits]
    lines = (repo / "data/predictions/test.csv").read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("cnn_predicted")
    assert served == [int(line.split(",")[column]) for line in lines[1:4]]


def study_env(server):
    # one thread per stage on every clone, so that the same seed gives the same bits on each of them
    return tool_env(MLFLOW_TRACKING_URI=server, OMP_NUM_THREADS="1")


def study(clone, env, *args, check=True):
    return run([sys.executable, "stages/study.py", *args], clone, env=env, check=check)


def push(clone, env, message, paths):
    run(["git", "add", *paths], clone)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", message], clone)
    run(["git", "pull", "-q", "--rebase"], clone)
    run(["git", "push", "-q"], clone)
    run(["dvc", "push", "-q", "--run-cache"], clone, env=env)


@pytest.mark.study
def test_a_study_split_over_machines_is_gathered_without_training(tmp_path, built_pipeline, team_server):
    """Clone A runs seeds 1 and 2 and is killed after seed 1; it pushes seed 1. Clone B runs seed 2 (a slice of
    the study) and pushes it. Clone C pulls both and aggregates without training anything, from the numbers
    each machine saved."""
    from mlflow.tracking import MlflowClient

    mlflow_server = team_server  # its own experiment there: team-study
    env = study_env(mlflow_server)
    origin = tmp_path / "origin.git"
    seed_repo = copy_built(built_pipeline, tmp_path / "seed-repo")
    reset_to_head(seed_repo)
    set_params(seed_repo, data__subset=200, study__seeds=[1, 2], study__jobs=1, tracking__log_model=False,
               tracking__experiment="team-study")
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote")], seed_repo)
    commit_all(seed_repo, "a study of seeds 1 and 2, shared DVC remote")
    run(["dvc", "push", "-q"], seed_repo)  # the repository's own outputs, as its first machine left them
    run(["git", "clone", "-q", "--bare", str(seed_repo), str(origin)], tmp_path)
    clones = {}
    for name in ("a", "b", "c"):
        clones[name] = tmp_path / f"machine-{name}"
        run(["git", "clone", "-q", str(origin), str(clones[name])], tmp_path)
    a, b, c = clones["a"], clones["b"], clones["c"]

    runner = subprocess.Popen([sys.executable, "stages/study.py", "run"], cwd=a, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (a / "metrics/study/seeds/1/run.json").exists():
        assert runner.poll() is None and time.time() < deadline, runner.communicate()[0]
        time.sleep(0.2)
    runner.send_signal(signal.SIGTERM)  # while seed 2 runs
    output = runner.communicate(timeout=120)[0]
    assert runner.returncode == 143 and "error: interrupted (SIGTERM)" in output, output
    assert (a / "metrics/study/seeds/1/predictions.csv").exists() and not (a / "metrics/study/seeds/2").exists()
    push(a, env, "seed 1", ["metrics/study/seeds/1"])

    sliced = study(b, env, "run", "--seeds", "2").stdout
    assert "running seed 2, 1 at a time" in sliced and "seed 2: finished" in sliced
    push(b, env, "seed 2", ["metrics/study/seeds/2"])

    run(["git", "pull", "-q"], c)
    run(["dvc", "pull", "-q", "--run-cache"], c, env=env)
    gathered = study(c, env, "all").stdout
    assert "seed 1: done already" in gathered and "seed 2: done already" in gathered
    assert "running seed" not in gathered and not (c / ".dvc/tmp/study").exists()  # nothing trained in C
    # the summary, printed
    assert "Is ResNet18 worth its cost over Small CNN" in gathered and "## Verdict" not in gathered
    result = json.loads((c / "metrics/study.json").read_text())
    assert result["k"] == 2 and result["seeds"] == [1, 2]
    for seed in (1, 2):  # each seed's numbers as the machine that ran it saved them
        saved = json.loads((c / f"metrics/study/seeds/{seed}/compare.json").read_text())
        row = next(row for row in result["per_seed"] if row["seed"] == seed)
        assert row["contenders"]["resnet"]["accuracy_gain"] == \
            pytest.approx(saved["contenders"]["resnet"]["verdict"]["accuracy_gain"])
    assert (c / "plots/study/gain_per_seed.png").read_bytes()[:4] == b"\x89PNG"

    client = MlflowClient(mlflow_server)  # the study's run on the server, every seed's runs findable from it
    study_run = client.get_run(result["mlflow_run_id"])
    assert study_run.data.metrics["k"] == 2 and study_run.data.params["seeds"] == "1 2"
    children = client.search_runs([study_run.info.experiment_id], f"tags.study_run_id = '{study_run.info.run_id}'")
    assert {(r.data.tags["seed"], r.data.tags["dvc.stage"]) for r in children} == {
        (seed, stage) for seed in ("1", "2") for stage in ("train@resnet", "train_baseline", "compare")}


def study_processes(clone) -> dict:
    """The processes of a study in `clone`, {pid: command line}: any whose command line or working directory
    is inside it."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = str((proc / "cwd").resolve())
        except OSError:
            continue
        if str(clone) in command or cwd.startswith(str(clone)):
            found[int(proc.name)] = command[:120]
    return found


def trainings_in(folder) -> list:
    """The train stage's processes (and their shell parents) working in `folder`."""
    return [pid for pid, command in study_processes(folder).items()
            if "stages/train.py" in command and Path(f"/proc/{pid}/cwd").resolve() == Path(folder).resolve()]


def signal_all(pids, signum):
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


@pytest.mark.study
def test_a_killed_driver_takes_its_workers_with_it_and_the_rerun_resumes_without_training_twice(
        tmp_path, built_pipeline, team_server):
    """`make study` with 2 jobs is SIGKILLed (the OOM killer, a lost SSH session) while both seeds train: within
    60 s no process of the study is left. The rerun resumes each seed from its last finished epoch (its scratch
    clone was kept), so each model of each seed is one MLflow run, FINISHED, none left RUNNING; `dvc exp show`
    lists both seeds' experiments."""
    from mlflow.tracking import MlflowClient

    env = tool_env(MLFLOW_TRACKING_URI=team_server)
    clone = copy_built(built_pipeline, tmp_path / "clone")
    reset_to_head(clone)
    set_params(clone, data__subset=200, epochs=4, models__resnet__recipe__epochs=4,
               models__cnn__recipe__batch_size=5, study__seeds=[5, 6], study__jobs=2, tracking__log_model=False,
               tracking__experiment="killed-driver")
    commit_all(clone, "a 2-job study of seeds 5 and 6")
    driver = subprocess.Popen([sys.executable, "stages/study.py", "run"], cwd=clone, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scratch = clone / ".dvc/tmp/study"
    # Each seed's training is frozen the moment it has an epoch to resume from, and stays frozen while the driver
    # dies: on a fast machine the few epochs left would otherwise end in the second it takes the kernel to tear
    # the driver down (or while the other seed catches up), and a training that ended after its DVC died is
    # rightly run again. Where DVC runs its commands through dash (no SHELL set, as in CI), each training has a
    # `sh -c` parent: frozen too.
    frozen, deadline = {}, time.time() + 300  # {seed's scratch clone: its training's processes}
    while len(frozen) < 2:
        assert driver.poll() is None and time.time() < deadline
        for resume_state in scratch.glob("reference-seed-*/.resume/*.pt"):
            seed_clone = resume_state.parents[1]
            if seed_clone not in frozen:
                frozen[seed_clone] = trainings_in(seed_clone)
                signal_all(frozen[seed_clone], signal.SIGSTOP)
        time.sleep(0.02)
    trainings = [pid for pids in frozen.values() for pid in pids]
    shells = [pid for pid in trainings if Path(f"/proc/{pid}/comm").read_text().strip() in SHELLS]
    assert len(trainings) - len(shells) == 2 and len(shells) in (0, 2), study_processes(clone)
    assert all(list(seed_clone.glob(".resume/*.pt")) for seed_clone in frozen), "a training ended before it froze"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 60
    while set(study_processes(clone)) - set(trainings) and time.time() < deadline:
        time.sleep(0.5)
    assert set(study_processes(clone)) <= set(trainings), "workers or DVC outlived the study's driver"
    signal_all(trainings, signal.SIGCONT)  # each finds its parent dead (a SIGTERM waits for it): it stops
    deadline = time.time() + 60
    while study_processes(clone) and time.time() < deadline:
        time.sleep(0.5)
    assert study_processes(clone) == {}, "processes of the study outlived its driver"

    states = {str(path.relative_to(scratch)): path.stat().st_size for path in scratch.glob("*/.resume/*.pt")}
    assert len(states) == 2, states  # what the rerun should resume from
    rerun = study(clone, env, "all").stdout
    assert "seed 5: finished" in rerun and "seed 6: finished" in rerun, rerun
    result = json.loads((clone / "metrics/study.json").read_text())
    assert result["seeds"] == [5, 6] and result["failed_seeds"] == {}
    resumed = [json.loads((clone / f"metrics/study/seeds/{seed}/train_{model}.json").read_text())["resumed_from_epoch"]
               for seed in (5, 6) for model in MODELS]
    assert max(resumed) >= 1, (resumed, states, rerun)  # what was killed went on from its epoch
    assert not list(scratch.glob("reference-seed-*"))  # collected: the scratch clones are gone
    client = MlflowClient(team_server)
    experiment = client.get_experiment_by_name("killed-driver")
    trained = [(run_.data.params["seed"], run_.data.tags["dvc.stage"], run_.info.status) for run_ in
               client.search_runs([experiment.experiment_id], "tags.`dvc.stage` LIKE 'train_%'")]
    assert sorted(trained) == [(seed, stage, "FINISHED") for seed in ("5", "6") for stage in ("train@resnet",
                                                                                             "train_baseline")]
    shown = json.dumps(json.loads(run(["dvc", "exp", "show", "--json"], clone, env=env).stdout))
    assert '"name": "study-seed-5"' in shown and '"name": "study-seed-6"' in shown, shown[:2000]
