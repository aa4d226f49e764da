"""Training survives interruption and refuses to go on from nonsense: each fault's message, exit status,
files and MLflow run state afterwards. The stages run as subprocesses in a scratch folder with the smoke
pipeline's prepared data (450 training images)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port, set_params, start_mlflow_server, stop, tool_env

pytestmark = pytest.mark.e2e


def scratch(tmp_path, repo, **changes):
    """stages/, src/, params.yaml (the smoke params plus `changes`, as conftest.set_params takes them) and
    data/prepared, in tmp_path."""
    for item in ("stages", "src"):
        shutil.copytree(REPO / item, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(repo / "data" / "prepared", tmp_path / "data" / "prepared")
    shutil.copy(repo / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, **changes)
    return tmp_path


def env_for(folder):
    return tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}", DVC_ROOT=str(folder))


def stage(folder, *args, check=False):
    result = subprocess.run([sys.executable, *args], cwd=folder, env=env_for(folder), capture_output=True,
                            text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def start(folder, *args):
    return subprocess.Popen([sys.executable, *args], cwd=folder, env=env_for(folder), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path, process, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def runs(folder, name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashion-mnist")
    found = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    return client, sorted(found, key=lambda r: r.info.start_time)


def epochs_without_timing(folder, model):
    import pandas as pd

    return pd.read_csv(folder / f"plots/train/{model}_epochs.csv").drop(columns="seconds")


@pytest.mark.long
def test_sigkill_mid_epoch_then_rerun_gives_the_same_weights(tmp_path, repo):
    """The resume test: SIGKILL during epoch 2 of 2, rerun: the same bytes as a run never interrupted,
    and one MLflow run with every step once."""
    # one thread, in make test-study too
    changes = dict(models__resnet__recipe__epochs=2, models__resnet__recipe__step_size=1, threads=1)
    straight = scratch(tmp_path / "straight", repo, **changes)
    stage(straight, "stages/train.py", "resnet", check=True)

    interrupted = scratch(tmp_path / "interrupted", repo, **changes)
    process = start(interrupted, "stages/train.py", "resnet")
    wait_for(interrupted / ".resume" / "resnet.pt", process)
    time.sleep(0.3)  # into epoch 2
    process.kill()
    process.wait()
    assert not (interrupted / "models" / "resnet.pt").exists()
    client, attempts = runs(interrupted, "ResNet18")
    assert [r.info.status for r in attempts] == ["RUNNING"]  # SIGKILL: nobody could say otherwise

    resumed = stage(interrupted, "stages/train.py", "resnet", check=True)
    assert "resnet: resuming from epoch 2 (1 of 2 done)" in resumed.stdout
    assert (interrupted / "models/resnet.pt").read_bytes() == (straight / "models/resnet.pt").read_bytes()
    assert epochs_without_timing(interrupted, "resnet").equals(epochs_without_timing(straight, "resnet"))
    assert not (interrupted / ".resume" / "resnet.pt").exists()  # removed once every output is written
    summary = json.loads((interrupted / "metrics/train/resnet.json").read_text())
    assert summary["resumed_from_epoch"] == 1

    client, attempts = runs(interrupted, "ResNet18")
    assert len(attempts) == 1 and attempts[0].info.status == "FINISHED"
    run_id = attempts[0].info.run_id
    assert summary["mlflow_run_id"] == run_id
    assert [m.step for m in client.get_metric_history(run_id, "val/accuracy")] == [1, 2]
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss_step"))
    assert steps == list(range(1, 2 * 23 + 1))  # 450 images, batch 20: 23 steps per epoch, each once


@pytest.mark.parametrize("signal_number, name, status", [(signal.SIGTERM, "SIGTERM", 143),
                                                        (signal.SIGINT, "SIGINT", 130)])
def test_interrupt_ends_in_one_line_keeps_the_epochs_and_marks_the_run_killed(tmp_path, repo, signal_number,
                                                                               name, status):
    # minutes: stopped long before
    folder = scratch(tmp_path, repo, models__cnn__recipe__epochs=30, models__cnn__recipe__batch_size=2)
    process = start(folder, "stages/train.py", "cnn")
    wait_for(folder / ".resume" / "cnn.pt", process)
    if signal_number == signal.SIGTERM:  # while it trains, a second training of the same model is refused
        second = stage(folder, "stages/train.py", "cnn")
        assert second.returncode == 1 and second.stderr == (
            f"error: .resume/cnn.lock: a training of cnn is already running in this workspace (PID {process.pid}); "
            "wait for it to finish or stop it, then run again\n")
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status
    assert stderr == f"error: interrupted ({name}); run the stage again to go on\n"
    assert (folder / ".resume" / "cnn.pt").exists() and not (folder / "models" / "cnn.pt").exists()
    _, attempts = runs(folder, "Small CNN")
    assert [r.info.status for r in attempts] == ["KILLED"]


def test_killing_dvc_alone_stops_the_training_and_the_rerun_resumes_it(tmp_path, repo):
    """SIGTERM to the `dvc repro` process only (what `timeout` or a CI cancel does): the training stage stops
    within seconds as on its own SIGTERM (run KILLED, resume state kept), and the rerun goes on in that run."""
    from conftest import commit_all, reset_to_head, run, set_params

    copy = tmp_path / "copy"  # the built smoke pipeline, with a tracking store of its own
    shutil.copytree(repo, copy, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    reset_to_head(copy)
    # ~0.5 s each here: dvc is stopped seconds before the training would end
    set_params(copy, models__cnn__recipe__epochs=8)
    commit_all(copy, "smoke, 8 CNN epochs")
    dvc = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro", "train_baseline"], cwd=copy,
                           env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(copy / ".resume" / "cnn.pt", dvc)  # epoch 1 is done
    training_pid = int((copy / ".resume" / "cnn.lock").read_text())
    dvc.send_signal(signal.SIGTERM)
    dvc.wait(timeout=60)
    deadline = time.time() + 10
    while Path(f"/proc/{training_pid}").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{training_pid}").exists(), "the training outlived dvc"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashion-mnist")
    killed = client.search_runs([experiment.experiment_id], "attributes.run_name = 'Small CNN'")
    assert [r.info.status for r in killed] == ["KILLED"]
    assert (copy / ".resume" / "cnn.pt").exists()

    result = run(["dvc", "repro", "train_baseline"], copy)
    assert "cnn: resuming from epoch" in result.stdout
    found = client.search_runs([experiment.experiment_id], "attributes.run_name = 'Small CNN'")
    assert [(r.info.run_id, r.info.status) for r in found] == [(killed[0].info.run_id, "FINISHED")]


@pytest.mark.long
def test_a_changed_config_starts_over_and_marks_the_orphan_killed(tmp_path, repo):
    # minutes: stopped long before
    folder = scratch(tmp_path, repo, models__cnn__recipe__epochs=30, models__cnn__recipe__batch_size=2)
    process = start(folder, "stages/train.py", "cnn")
    wait_for(folder / ".resume" / "cnn.pt", process)
    process.kill()
    process.wait()
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["models"]["cnn"]["recipe"]["epochs"], params["models"]["cnn"]["recipe"]["lr"] = 1, 0.002
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    result = stage(folder, "stages/train.py", "cnn", check=True)
    assert "starting over: .resume/cnn.pt was saved by another configuration, data or code" in result.stdout
    assert "KILLED (its process" in result.stdout
    _, attempts = runs(folder, "Small CNN")
    assert [r.info.status for r in attempts] == ["KILLED", "FINISHED"]


def test_divergence_stops_at_once_fails_the_run_and_writes_nothing(tmp_path, repo):
    folder = scratch(tmp_path, repo, models__cnn__recipe__lr=1000.0)
    result = stage(folder, "stages/train.py", "cnn")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cnn: training loss is ")
    assert "at epoch 1, step" in result.stderr and "training diverged; try a lower lr" in result.stderr
    for output in ("models/cnn.pt", "metrics/train/cnn.json", "plots/train/cnn_epochs.csv"):
        assert not (folder / output).exists()
    _, attempts = runs(folder, "Small CNN")
    assert [r.info.status for r in attempts] == ["FAILED"]


def test_evaluate_checks_every_input_before_it_writes_or_logs_anything(tmp_path, repo):
    """A checkpoint of the wrong model, then a truncated one, as the second of the two: one line, and the
    first model's confusion matrix, the metrics and its FINISHED MLflow run are left as they were."""
    folder = scratch(tmp_path, repo)
    for item in ("models", "metrics", "plots"):
        shutil.copytree(repo / item, folder / item)
    shutil.copy(repo / "mlflow.db", folder / "mlflow.db")
    resnet_run = json.loads((folder / "metrics/train/resnet.json").read_text())["mlflow_run_id"]
    client, _ = runs(folder, "ResNet18")
    logged_before = len(client.get_metric_history(resnet_run, "test_accuracy"))
    kept = {path: (folder / path).read_bytes() for path in ("metrics/evaluate.json",
                                                            "plots/evaluate/confusion_resnet.csv")}
    shutil.copy(folder / "models/resnet.pt", folder / "models/cnn.pt")
    result = stage(folder, "stages/evaluate.py")
    assert result.returncode == 1 and result.stderr == (
        "error: models/cnn.pt: holds a 'resnet' model, expected 'cnn'; rerun its train stage\n")
    (folder / "models/cnn.pt").write_bytes((repo / "models/cnn.pt").read_bytes()[:5000])
    result = stage(folder, "stages/evaluate.py")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: models/cnn.pt: not a readable checkpoint (")
    assert result.stderr.endswith("); rerun its train stage\n")  # whole, not cut off
    assert {path: (folder / path).read_bytes() for path in kept} == kept
    assert not (folder / "data/predictions").exists()
    assert len(client.get_metric_history(resnet_run, "test_accuracy")) == logged_before
    assert client.get_run(resnet_run).info.status == "FINISHED"


def test_unwritable_outputs_are_refused_before_training(tmp_path, repo):
    folder = scratch(tmp_path, repo)
    (folder / "metrics").write_text("a file where the metrics folder should be")
    started = time.perf_counter()
    result = stage(folder, "stages/train.py", "cnn")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: metrics/train: not writable (")
    assert not (folder / "models" / "cnn.pt").exists() and not (folder / ".resume" / "cnn.pt").exists()
    assert time.perf_counter() - started < 60
    assert os.path.isfile(folder / "metrics")


def test_tracking_outage_mid_training_keeps_the_training_and_names_what_was_not_logged(tmp_path, repo):
    port = free_port()
    folder = scratch(tmp_path / "work", repo, models__cnn__recipe__epochs=3, tracking__log_model=False)
    (tmp_path / "server").mkdir()
    server = start_mlflow_server(tmp_path / "server", port)
    env = tool_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}", DVC_ROOT=str(folder))
    try:
        process = subprocess.Popen([sys.executable, "stages/train.py", "cnn"], cwd=folder, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(folder / ".resume" / "cnn.pt", process)  # epoch 1 is done and logged
        stop(server)
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 1
        assert stderr.count("\n") == 1 and stderr.startswith(f"error: MLflow tracking at http://127.0.0.1:{port}")
        assert "metric points of epochs [2, 3] were not logged" in stderr
        assert "kept to send later" in stdout  # training went on through the outage
        assert (folder / "models/cnn.pt").exists() and (folder / ".resume/cnn.pt").exists()
    finally:
        stop(server)
    # the rerun trains nothing: every epoch is in the resume state (here into a new local store: EpochLogger's
    # sending of what an outage held back is tested with a fake tracker in test_tracking.py)
    result = stage(folder, "stages/train.py", "cnn", check=True)
    assert "resuming from epoch 4 (3 of 3 done)" in result.stdout
    assert not (folder / ".resume/cnn.pt").exists()
    client, attempts = runs(folder, "Small CNN")
    assert [r.info.status for r in attempts] == ["FINISHED"]
    assert sorted(m.step for m in client.get_metric_history(attempts[0].info.run_id, "val/accuracy")) == [1, 2, 3]
