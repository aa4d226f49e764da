"""The study's seeds as tasks on a Dask cluster, with real processes on 127.0.0.1: a scheduler, two one-thread
workers (each its own local directory), a bare git remote, a local-directory DVC remote and an MLflow server.
One worker is killed while it trains; the study still completes on the other, and its per-seed predictions
are byte for byte those of the local path (same CPU kind, one thread). Each seed trains to the end once."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import (
    VENV_BIN,
    commit_all,
    copy_built,
    free_port,
    reset_to_head,
    run,
    set_params,
    start_mlflow_server,
    stop,
    tool_env,
    wait_for_workers,
)

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]
SEEDS = ("1", "2", "3")


def start(command, **kwargs):
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)


@pytest.fixture
def cluster(tmp_path):
    env = tool_env()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [start([str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                        "--no-dashboard"], env=env)]
    workers = {}
    for name in ("a", "b"):
        worker_port = free_port()
        workers[f"tcp://127.0.0.1:{worker_port}"] = start(
            [str(VENV_BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny", "--resources", "seed=1",
             "--host", "127.0.0.1", "--worker-port", str(worker_port), "--no-dashboard",
             "--local-directory", str(tmp_path / f"worker-{name}")], env=env, start_new_session=True)
    processes += workers.values()
    try:
        wait_for_workers(address, 2, env)
        yield address, workers
    finally:
        for process in processes:
            process.kill()
            process.wait()


def team_clones(tmp_path, built_pipeline, **params):
    """The team's bare git remote (origin) of the smoke pipeline with `params` and a shared local DVC remote
    (tmp_path/dvc-remote), and the driver's clone of it."""
    seed_repo = copy_built(built_pipeline, tmp_path / "seed-repo")
    reset_to_head(seed_repo)
    set_params(seed_repo, **params)
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote")], seed_repo)
    commit_all(seed_repo, "a study, a shared DVC remote")
    origin, driver = tmp_path / "origin.git", tmp_path / "driver"
    run(["git", "clone", "-q", "--bare", str(seed_repo), str(origin)], tmp_path)
    run(["git", "clone", "-q", str(origin), str(driver)], tmp_path)
    return origin, driver


def test_a_study_on_a_dask_cluster_survives_a_dead_worker_and_matches_the_local_path(tmp_path, built_pipeline,
                                                                                  team_server, cluster):
    from mlflow.tracking import MlflowClient

    address, workers = cluster
    env = tool_env(MLFLOW_TRACKING_URI=team_server, OMP_NUM_THREADS="1")
    origin, driver = team_clones(tmp_path, built_pipeline, data__subset=200, study__seeds=[1, 2, 3], study__jobs=1,
                                 tracking__log_model=False, tracking__experiment="cluster-study")

    study = subprocess.Popen([sys.executable, "stages/study.py", "all", "--cluster", address], cwd=driver, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(study.stdout), daemon=True)
    reader.start()
    deadline, killed = time.time() + 300, None
    while killed is None:  # the first worker whose seed has started training (its resume state exists)
        assert study.poll() is None and time.time() < deadline, "".join(lines)
        for worker_address, process in workers.items():
            folder = tmp_path / f"worker-{'ab'[list(workers).index(worker_address)]}"
            if any(folder.glob("**/*seed-*/.resume/*.lock")):
                os.killpg(process.pid, signal.SIGKILL)
                killed = worker_address
                break
        time.sleep(0.2)
    assert study.wait(timeout=600) == 0, "".join(lines)
    reader.join(timeout=10)
    output = "".join(lines)
    assert "finished on" in output and f"finished on {killed}" not in output, output
    result = json.loads((driver / "metrics/study.json").read_text())
    assert result["seeds"] == [1, 2, 3] and result["failed_seeds"] == {}
    survivor = next(address for address in workers if address != killed)
    for seed in SEEDS:  # the killed worker finished none: every seed came back from the survivor
        assert json.loads((driver / f"metrics/study/seeds/{seed}/run.json").read_text())["worker"] == survivor
    experiment = MlflowClient(team_server).get_experiment_by_name("cluster-study")
    trained = [run_.data.params["seed"] for run_ in MlflowClient(team_server).search_runs(
        [experiment.experiment_id], "tags.`dvc.stage` = 'train@resnet' and attributes.status = 'FINISHED'")]
    assert sorted(trained) == sorted(SEEDS)  # each seed trained to the end once: none again after it was written

    local = tmp_path / "local"  # the same seeds on this machine's own Dask cluster, without the cluster's run cache
    run(["git", "clone", "-q", str(origin), str(local)], tmp_path)
    run([sys.executable, "stages/study.py", "all"], local, env=tool_env(OMP_NUM_THREADS="1",
                                                                        MLFLOW_TRACKING_URI=team_server))
    for seed in SEEDS:
        assert (local / f"metrics/study/seeds/{seed}/predictions.csv").read_bytes() == \
            (driver / f"metrics/study/seeds/{seed}/predictions.csv").read_bytes(), seed
    local_result = json.loads((local / "metrics/study.json").read_text())
    assert local_result["baseline"] == result["baseline"] and local_result["models"] == result["models"]
    for name, contender in result["contenders"].items():  # all but the training times, which the runs' load sets
        for key in set(contender) - {"train_time_ratio"}:
            assert local_result["contenders"][name][key] == contender[key], (name, key)


def test_a_cluster_task_restores_a_seed_from_the_shared_run_cache_instead_of_training_it(tmp_path, built_pipeline):
    """seed_task._steps of a cluster task (clone the commit, probe the DVC remote, `dvc exp run --pull -S seed=N`,
    push outputs, run cache and the run cache's uncached outputs), run twice on fresh clones as two workers
    would: the second restores every stage from what the first pushed, trains nothing, and gives the same
    predictions byte for byte."""
    from fashion_compare import seed_task
    from fashion_compare.seed_folders import REFERENCE

    seed_repo = copy_built(built_pipeline, tmp_path / "seed-repo")
    reset_to_head(seed_repo)
    set_params(seed_repo, data__subset=200, tracking__enabled=False)
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote")], seed_repo)
    commit_all(seed_repo, "smoke seeds, a shared DVC remote")
    origin = tmp_path / "origin.git"
    run(["git", "clone", "-q", "--bare", str(seed_repo), str(origin)], tmp_path)
    commit = run(["git", "rev-parse", "HEAD"], seed_repo).stdout.strip()
    task = seed_task.SeedTask(seed=7, recipe=REFERENCE, commit=commit, origin=str(origin), workspace=None,
                           mlflow_uri=None, threads=1, stop_event="unused")
    outputs = {}
    for worker in ("first", "second"):
        scratch = tmp_path / worker / "clone"
        scratch.parent.mkdir()
        log = []
        for command, required in seed_task._steps(task, scratch, resuming=False):
            if callable(command):  # the remote's checks: the probe, the push of the uncached outputs
                assert command() == ""
                continue
            cwd = scratch.parent if command[0] == "git" else scratch
            result = run(command, cwd, env=tool_env(OMP_NUM_THREADS="1"), check=required)
            log.append(result.stdout + result.stderr)
        outputs[worker] = ("".join(log), (scratch / "data/predictions/test.csv").read_bytes())
    first, second = outputs["first"], outputs["second"]
    assert "Running stage 'train@resnet'" in first[0]
    assert "Running stage" not in second[0], second[0][-3000:]  # every stage restored from the run cache
    assert "Stage 'train@resnet' is cached - skipping run, checking out outputs" in second[0], second[0][-3000:]
    assert second[1] == first[1]


def trainings_under(folder) -> list:
    """The train stage's processes whose working directory is inside `folder` (a worker's scratch clones)."""
    found = []
    for proc in (path for path in os.scandir("/proc") if path.name.isdigit()):
        try:
            command = open(f"/proc/{proc.name}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            if "stages/train.py" in command and os.path.realpath(f"/proc/{proc.name}/cwd").startswith(str(folder)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_seed_whose_mlflow_server_stopped_keeps_its_training_on_the_dvc_remote_for_the_rerun(
        tmp_path, built_pipeline, cluster):
    """The MLflow server stops while a seed trains on a cluster: the train stage finishes its epochs and fails
    (N metric points not logged), and the task's clone goes with the task; its resume state goes to the DVC
    remote first. Once the server is back, the rerun, on whichever worker, restores it and trains no epoch
    again: it logs the missing epochs into the same MLflow run, which ends FINISHED, one run for the seed."""
    from mlflow.tracking import MlflowClient

    address, workers = cluster
    port, store = free_port(), tmp_path / "mlflow"
    store.mkdir()
    server, uri = start_mlflow_server(store, port), f"http://127.0.0.1:{port}"
    env = tool_env(MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1")
    _, driver = team_clones(tmp_path, built_pipeline, data__subset=200, epochs=3, models__resnet__recipe__epochs=3,
                            models__resnet__recipe__batch_size=5, study__seeds=[4], study__jobs=1,
                            tracking__log_model=False,
                            tracking__experiment="cluster-outage")
    command = [sys.executable, "stages/study.py", "run", "--cluster", address]
    study = subprocess.Popen(command, cwd=driver, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.time() + 300
    while not list(tmp_path.glob("worker-*/**/*seed-4/.resume/resnet.pt")):  # its first epoch is done
        assert study.poll() is None and time.time() < deadline, study.stdout.read()
        time.sleep(0.02)
    trainings = trainings_under(tmp_path)
    for pid in trainings:  # held while the server stops, so that no epoch ends with it up
        os.kill(pid, signal.SIGSTOP)
    stop(server)
    for pid in trainings:
        os.kill(pid, signal.SIGCONT)
    output, _ = study.communicate(timeout=600)
    assert study.returncode == 1, output
    assert "seed 4: FAILED" in output and "were not logged" in output, output
    assert "its resume state (resnet) is kept on the DVC remote" in output, output
    assert list((tmp_path / "dvc-remote/study-resume/reference-seed-4").glob("resnet.pt"))

    server = start_mlflow_server(store, port)  # the same store, back
    try:
        again = run(command, driver, env=env)
        assert "seed 4: finished on" in again.stdout, again.stdout
        trained = json.loads((driver / "metrics/study/seeds/4/train_resnet.json").read_text())
        assert trained["resumed_from_epoch"] == trained["epochs"] == 3  # no epoch trained again
        assert not (tmp_path / "dvc-remote/study-resume/reference-seed-4").exists()  # forgotten once finished
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("cluster-outage")
        runs = client.search_runs([experiment.experiment_id], "tags.`dvc.stage` = 'train@resnet'")
        assert [run_.info.status for run_ in runs] == ["FINISHED"]
        assert [entry.step for entry in client.get_metric_history(runs[0].info.run_id, "val/accuracy")] == [1, 2, 3]
    finally:
        stop(server)
