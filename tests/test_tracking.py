import contextlib
import os
from pathlib import Path

import pytest

from fashion_compare import mlflow_store, tracking


def test_default_store_is_anchored_at_the_dvc_root(tmp_path, monkeypatch):
    """Inside `dvc exp run --temp/--queue` the cwd is a temporary checkout; DVC_ROOT names the real repo."""
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "run1"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert mlflow_store.tracking_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert mlflow_store.tracking_uri() == "http://mlflow.example:5000"


def test_tracker_creates_experiment_with_artifacts_at_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    tracker = tracking.Tracker("unit-test")
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    assert (tmp_path / "mlflow.db").is_file()
    assert tracking.Tracker("unit-test").experiment_id == tracker.experiment_id  # found, not created twice
    run_id = tracker.start_run("unit", {"lr": 0.1}, {"dvc.stage": "unit"})
    tracker.log_metric_series(run_id, [("train/loss_step", 1.0 / (i + 1), i) for i in range(2500)])
    assert len(tracker.client.get_metric_history(run_id, "train/loss_step")) == 2500
    assert tracker.has_run(run_id) and not tracker.has_run("0" * 32)


def test_a_damaged_store_says_to_move_it_aside(tmp_path, monkeypatch):
    from fashion_compare.errors import TrackingError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "mlflow.db").write_bytes(b"not a database, " * 1000)
    with pytest.raises(TrackingError) as error:
        tracking.Tracker("unit-test")
    message = str(error.value)
    assert message.startswith(f"MLflow tracking at sqlite:///{tmp_path / 'mlflow.db'} failed: ") and "\n" not in message
    assert "move it aside (mv mlflow.db mlflow.db.broken) and run again to start a new store" in message


def test_a_seed_in_its_scratch_clone_waits_for_the_workspace_store_lock(tmp_path, monkeypatch):
    """A study's seeds run in scratch clones with the workspace's sqlite store in MLFLOW_TRACKING_URI: it is not
    their own default store, yet two of them creating it at once fail in its schema migration ("Online migration
    expected to match one row"; a 3-seed study on a fresh clone lost a seed so). While the lock beside the
    database is held, a connecting stage waits and creates nothing; released, it connects."""
    import fcntl
    import subprocess
    import sys
    import time

    database = tmp_path / "workspace" / "mlflow.db"
    scratch = tmp_path / "workspace" / ".dvc" / "tmp" / "study" / "reference-seed-1"
    scratch.mkdir(parents=True)
    assert mlflow_store.sqlite_path(f"sqlite:///{database}") == database
    assert mlflow_store.sqlite_path("sqlite:///relative/mlflow.db") == Path("relative/mlflow.db")
    assert mlflow_store.sqlite_path("sqlite://") is None and mlflow_store.sqlite_path("http://host:5000") is None
    lock = database.with_name(".mlflow.db.lock")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{database}", "DVC_ROOT": str(scratch)}
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        stage = subprocess.Popen([sys.executable, "-c", "from fashion_compare import tracking; "
                                  "print(tracking.Tracker('seed').experiment_id)"],
                                 cwd=scratch, env=env, stdout=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not any(os.path.realpath(fd) == str(lock) for fd in _open_files(stage.pid)):
            assert stage.poll() is None and time.time() < deadline, "the stage did not wait for the lock"
            time.sleep(0.05)
        time.sleep(0.5)
        assert stage.poll() is None and not database.exists()  # waiting: no half-migrated store
    assert stage.communicate(timeout=120)[0].strip() and stage.returncode == 0
    assert database.is_file()


def _open_files(pid: int) -> list:
    with contextlib.suppress(OSError):
        return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    return []


def test_the_statistics_and_plotting_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import fashion_compare.comparison, fashion_compare.uncertainty, fashion_compare.study, "
            "fashion_compare.plots; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# ---------------------------------------------------------------- without a server: a fake tracker

class FakeTracker:
    """What EpochLogger and stage_run use of a Tracker, in memory; `down` makes every call fail."""

    uri = "fake://tracking"

    def __init__(self):
        self.points, self.statuses, self.tags, self.down, self.started = [], {}, {}, False, []

    def _check(self):
        if self.down:
            raise ConnectionError("Connection refused")

    def log_metric_series(self, run_id, points):
        self._check()
        self.points += list(points)

    def logged_steps(self, run_id, key):
        self._check()
        return {step for name, _, step in self.points if name == key}

    def start_run(self, run_name, params, tags):
        self.started.append((run_name, params, tags))
        self.statuses["new-run"] = "RUNNING"
        return "new-run"

    def reopen_run(self, run_id):
        if run_id not in self.statuses:
            return False
        self.statuses[run_id] = "RUNNING"
        return True

    class client:  # no run left RUNNING by a dead process (tracking.mark_orphans_killed finds none)
        @staticmethod
        def search_runs(*args, **kwargs):
            return []

    experiment_id = "0"

    def set_tags(self, run_id, tags):
        self.tags.update(tags)

    def end_run(self, run_id, status="FINISHED"):
        self.statuses[run_id] = status

    def end_run_quietly(self, run_id, status):
        self.end_run(run_id, status)


def record(epoch):
    from fashion_compare.training import EpochRecord

    return EpochRecord(epoch=epoch, train_loss=1.0 / epoch, train_accuracy=0.5, val_loss=1.0, val_accuracy=0.6,
                       lr=0.001, seconds=1.0)


def test_epoch_logger_keeps_what_an_outage_stops_and_names_it(capsys):
    from fashion_compare.errors import TrackingError

    fake = FakeTracker()
    logger = tracking.EpochLogger(fake, "run")
    logger.on_epoch(record(1), [(1, 1, 0.9), (2, 1, 0.8)])
    assert [(k, s) for k, _, s in fake.points if k == "train/loss_step"] == [("train/loss_step", 1),
                                                                            ("train/loss_step", 2)]
    fake.down = True
    logger.on_epoch(record(2), [(3, 2, 0.7), (4, 2, 0.6)])
    logger.on_epoch(record(3), [(5, 3, 0.5), (6, 3, 0.4)])
    assert "metric points kept to send later" in capsys.readouterr().out
    with pytest.raises(TrackingError, match=r"fake://tracking failed: Connection refused; 16 metric points of "
                                            r"epochs \[2, 3\] were not logged"):
        logger.flush()
    fake.down = False  # back: the next attempt sends what is missing, and nothing twice
    resumed = tracking.EpochLogger(fake, "run")
    steps = [(1, 1, 0.9), (2, 1, 0.8), (3, 2, 0.7), (4, 2, 0.6), (5, 3, 0.5), (6, 3, 0.4)]
    resumed.on_resume([record(1), record(2), record(3)], steps)
    resumed.flush()
    assert sorted(s for k, _, s in fake.points if k == "train/loss_step") == [1, 2, 3, 4, 5, 6]
    assert sorted(s for k, _, s in fake.points if k == "val/accuracy") == [1, 2, 3]


@pytest.mark.parametrize("raised, status", [(None, "FINISHED"), (KeyboardInterrupt, "KILLED"),
                                            (ValueError, "FAILED")])
def test_stage_run_ends_with_the_status_of_the_block(raised, status):
    fake = FakeTracker()
    with pytest.raises(raised) if raised else contextlib.nullcontext():
        with tracking.stage_run(fake, "train_cnn", "Small CNN", {"lr": 0.1}) as run_id:
            assert fake.statuses[run_id] == "RUNNING"
            if raised:
                raise raised()
    assert fake.statuses == {"new-run": status}
    assert fake.started[0][0] == "Small CNN" and fake.started[0][2]["dvc.stage"] == "train_cnn"


def test_stage_run_goes_on_in_the_interrupted_run_when_it_exists(capsys):
    fake = FakeTracker()
    fake.statuses["old-run"] = "KILLED"
    with tracking.stage_run(fake, "train_cnn", "Small CNN", {}, resume_run_id="old-run") as run_id:
        assert run_id == "old-run" and fake.tags["pid"] == str(os.getpid())
    assert fake.statuses["old-run"] == "FINISHED" and not fake.started
    with tracking.stage_run(fake, "train_cnn", "Small CNN", {}, resume_run_id="gone") as run_id:
        assert run_id == "new-run"
    assert "MLflow run gone of the interrupted attempt is not in fake://tracking" in capsys.readouterr().out
    with tracking.stage_run(None, "train_cnn", "Small CNN", {}) as run_id:
        assert run_id is None


def test_an_experiment_created_without_its_kind_gets_it_when_found(tmp_path, monkeypatch):
    """Stores made by an earlier version hold the experiment without the tag: MLflow's UI then opens it on
    the GenAI overview."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    client = MlflowClient(mlflow_store.tracking_uri())
    experiment_id = client.create_experiment("older")
    assert "mlflow.experimentKind" not in client.get_experiment(experiment_id).tags
    assert tracking.Tracker("older").experiment_id == experiment_id
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_only_connect_sets_the_mlflow_client_environment(tmp_path, monkeypatch):
    """A Tracker changes no environment variable; `connect` sets MLflow's fail-fast HTTP defaults, keeping a
    value the user chose, and gives no tracker with tracking off."""
    from fashion_compare.params import TrackingParams

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    before = dict(os.environ)
    tracking.Tracker("unit-test")
    assert dict(os.environ) == before
    assert tracking.connect(TrackingParams(enabled=False)) is None and dict(os.environ) == before
    assert tracking.connect(TrackingParams(experiment="unit-test")).experiment_id
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"


def test_the_ui_link_opens_the_experiment_in_the_model_training_view(tmp_path, monkeypatch):
    """MLflow 3.17's UI opens an experiment on its GenAI overview unless the link asks for the model-training
    view (checked in headless Chromium: docs/experiments.md)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert mlflow_store.ui_link("fashion-mnist", 5000) == "http://127.0.0.1:5000/#/experiments"  # no store yet
    experiment_id = tracking.Tracker("fashion-mnist").experiment_id
    assert mlflow_store.ui_link("fashion-mnist", 5001) == \
        f"http://127.0.0.1:5001/#/experiments/{experiment_id}?workflowType=machine_learning"


def test_an_experiment_created_by_another_process_meanwhile_is_found(tmp_path, monkeypatch):
    """Two queue workers connect at once to one tracking server: both find no experiment, one creates it, and
    the other's creation is refused as RESOURCE_ALREADY_EXISTS; that one goes on with the experiment."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'server.db'}")  # not the locked default
    client = MlflowClient(mlflow_store.tracking_uri())
    real_lookup = MlflowClient.get_experiment_by_name
    state = {"calls": 0}

    def the_other_process_is_faster(self, name):
        state["calls"] += 1
        if state["calls"] == 1:  # our first look: nothing yet; the other worker creates it right after
            client.create_experiment(name)
            return None
        return real_lookup(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", the_other_process_is_faster)
    tracker = tracking.Tracker("raced")
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", real_lookup)
    assert tracker.experiment_id == client.get_experiment_by_name("raced").experiment_id
