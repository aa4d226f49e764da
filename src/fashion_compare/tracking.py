"""MLflow tracking: where runs go (anchored at the repository root), and what each run holds.

No MLFLOW_TRACKING_URI -> a sqlite store `mlflow.db` and artifacts in `mlartifacts/` at the
repository root, found through DVC_ROOT so `dvc exp run --temp/--queue` runs are not lost in
a temporary workspace. Metrics are sent in batches, once per epoch, so logging stays cheap.
"""

import contextlib
import fcntl
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import TrackingError, first_line

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
BATCH_LIMIT = 1000  # MLflow's maximum number of metrics per log_batch call
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def repo_root() -> Path:
    """The real repository root, also from inside a DVC temporary experiment workspace."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(top.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / STORE_FILE}"


def _is_default_store(uri: str) -> bool:
    return uri == f"sqlite:///{repo_root() / STORE_FILE}"


@contextlib.contextmanager
def _store_lock(uri):
    """Serialise creating the default sqlite store: concurrent schema migrations can fail."""
    if not _is_default_store(uri):
        yield
        return
    lock_path = repo_root() / f".{STORE_FILE}.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def git_commit() -> str:
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run_tags(stage: str, params_file="params.yaml") -> dict:
    import socket

    tags = {"dvc.stage": os.environ.get("DVC_STAGE", stage), "git.commit": git_commit(),
            "mlflow.source.git.commit": git_commit(), "host": socket.gethostname(), "pid": str(os.getpid()),
            "params.sha256": hashlib.sha256(Path(params_file).read_bytes()).hexdigest()[:16]}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


class Tracker:
    """A connection to one MLflow experiment. Fails fast, in one line, when the store is unreachable."""

    def __init__(self, experiment: str):
        # Fail within seconds instead of retrying for minutes (only where the user has not chosen).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        import logging

        import mlflow

        # "Creating initial MLflow database tables..." on stderr, before a stage's own one-line error, is noise
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri()
        scheme = self.uri.split("://", 1)[0].split("+", 1)[0] if "://" in self.uri else ""
        if scheme and scheme not in TRACKING_SCHEMES:
            raise TrackingError(f"MLflow tracking at {self.uri} failed: unsupported scheme '{scheme}://' "
                                f"(use one of {', '.join(s + '://' for s in TRACKING_SCHEMES)}; check "
                                "MLFLOW_TRACKING_URI, or set tracking.enabled: false)")
        self.seconds = 0.0  # time spent talking to MLflow
        started = time.perf_counter()
        try:
            with _store_lock(self.uri):
                mlflow.set_tracking_uri(self.uri)
                self.client = MlflowClient(self.uri)
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    location = (repo_root() / ARTIFACT_DIR).as_uri() if _is_default_store(self.uri) else None
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
                else:
                    self.experiment_id = found.experiment_id
        except Exception as error:  # MlflowException, connection errors, bad URIs: all one line
            raise TrackingError(f"MLflow tracking at {self.uri} failed: {first_line(error)} "
                                "(check MLFLOW_TRACKING_URI, or set tracking.enabled: false)") from None
        self.seconds += time.perf_counter() - started

    @contextlib.contextmanager
    def _timed(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started

    def start_run(self, run_name: str, params: dict, tags: dict) -> str:
        with self._timed():
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            self.log_params(run.info.run_id, params)
            return run.info.run_id

    def run_params(self, run_id) -> dict:
        with self._timed():
            return dict(self.client.get_run(run_id).data.params)

    def has_run(self, run_id) -> bool:
        from mlflow.exceptions import MlflowException

        with self._timed():
            try:
                self.client.get_run(run_id)
                return True
            except MlflowException:
                return False

    def log_params(self, run_id, params: dict):
        from mlflow.entities import Param

        with self._timed():
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id, values: dict, step=0):
        """Log {key: value} at `step`, in as few calls as MLflow allows."""
        self.log_metric_series(run_id, [(key, value, step) for key, value in values.items()])

    def log_metric_series(self, run_id, points):
        """Log (key, value, step) points in batches of at most BATCH_LIMIT."""
        from mlflow.entities import Metric

        with self._timed():
            now = int(time.time() * 1000)
            metrics = [Metric(key, float(value), now, int(step)) for key, value, step in points]
            for start in range(0, len(metrics), BATCH_LIMIT):
                self.client.log_batch(run_id, metrics=metrics[start:start + BATCH_LIMIT])

    def set_tags(self, run_id, tags: dict):
        with self._timed():
            for key, value in tags.items():
                self.client.set_tag(run_id, key, str(value))

    def log_artifact(self, run_id, path, artifact_path=None):
        with self._timed():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id, text, artifact_file):
        with self._timed():
            self.client.log_text(run_id, text, artifact_file)

    def log_dict(self, run_id, data, artifact_file):
        with self._timed():
            self.client.log_dict(run_id, data, artifact_file)

    def end_run(self, run_id, status="FINISHED"):
        with self._timed():
            self.client.set_terminated(run_id, status)

    def end_run_quietly(self, run_id, status):
        """end_run on the way out of a failure: a second failure must not hide the first."""
        try:
            self.end_run(run_id, status)
        except Exception as error:
            print(f"warning: could not mark MLflow run {run_id} {status}: {first_line(error)}")

    def reopen_run(self, run_id) -> bool:
        """Mark an interrupted run RUNNING again to go on logging into it; False if it is gone."""
        from mlflow.exceptions import MlflowException

        with self._timed():
            try:
                self.client.update_run(run_id, status="RUNNING")
                return True
            except MlflowException:
                return False

    def mark_orphans_killed(self, stage: str, keep=None):
        """Runs of `stage` left RUNNING by a process on this host that no longer exists (SIGKILL)."""
        import socket

        host, stage = socket.gethostname(), os.environ.get("DVC_STAGE", stage)
        with self._timed():
            runs = self.client.search_runs([self.experiment_id], f"attributes.status = 'RUNNING' and "
                                           f"tags.`dvc.stage` = '{stage}' and tags.`host` = '{host}'")
        for run in runs:
            pid = int(run.data.tags.get("pid", "0") or 0)
            if run.info.run_id != keep and pid and not _process_alive(pid):
                self.end_run(run.info.run_id, "KILLED")
                print(f"marked MLflow run {run.info.run_id} KILLED (its process {pid} is gone)")

    def log_model(self, run_id, model, example, registered_name=None):
        """Log with MLflow's PyTorch flavour: signature and input example (N x 1 x 28 x 28 float32)."""
        import mlflow
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        model = model.eval().to("cpu")
        with torch.inference_mode():
            output = model(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output)
        with self._timed(), mlflow.start_run(run_id=run_id, nested=False):
            # Explicit requirements: MLflow's inference of them costs ~10 s per model.
            requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
            info = mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                            pip_requirements=requirements,
                                            registered_model_name=registered_name)
        return info.model_uri


class EpochLogger:
    """A training observer: per epoch, one batch holding that epoch's per-step losses and epoch metrics.

    A tracking outage does not stop training: what could not be sent is kept and sent with the next
    epoch; `flush()` at the end raises a TrackingError naming what is still unsent."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id
        self.unsent, self.last_error = [], None

    @staticmethod
    def points(record, steps):
        points = [("train/loss_step", loss, step) for step, _, loss in steps]
        points += [("train/loss", record.train_loss, record.epoch),
                   ("train/accuracy", record.train_accuracy, record.epoch),
                   ("val/loss", record.val_loss, record.epoch),
                   ("val/accuracy", record.val_accuracy, record.epoch),
                   ("lr", record.lr, record.epoch),
                   ("epoch_seconds", record.seconds, record.epoch)]
        return points

    def on_epoch(self, record, steps):
        self.unsent += self.points(record, steps)
        self._send()

    def on_resume(self, records, steps):
        """Send the epochs of an interrupted attempt that did not reach MLflow (none twice)."""
        try:
            with self.tracker._timed():
                logged = {m.step for m in self.tracker.client.get_metric_history(self.run_id, "val/accuracy")}
        except Exception as error:
            self.last_error = error
            logged = set()
        for record in records:
            if record.epoch not in logged:
                self.unsent += self.points(record, [s for s in steps if s[1] == record.epoch])
        self._send()

    def _send(self):
        if not self.unsent:
            return
        try:
            self.tracker.log_metric_series(self.run_id, self.unsent)
            self.unsent, self.last_error = [], None
        except Exception as error:  # the server is away: keep the points, try again next epoch
            self.last_error = error
            print(f"warning: MLflow unreachable ({first_line(error)}); {len(self.unsent)} metric points "
                  "kept to send later")

    def flush(self):
        self._send()
        if self.unsent:
            epochs = sorted({int(step) for key, _, step in self.unsent if key == "val/accuracy"})
            raise TrackingError(f"MLflow tracking at {self.tracker.uri} failed: {first_line(self.last_error)}; "
                                f"{len(self.unsent)} metric points of epochs {epochs} were not logged "
                                "(the stage's outputs are written)")


def metric_key(name: str) -> str:
    """A class name as a readable MLflow metric key part: 'T-shirt/top' -> 'T-shirt_top'."""
    return name.replace("/", "_").replace(" ", "_")


def log_figure(tracker: Tracker, run_id, figure, artifact_file):
    from .files import save_figure

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        save_figure(path, figure)
        tracker.log_artifact(run_id, path, str(Path(artifact_file).parent) if "/" in artifact_file else None)
