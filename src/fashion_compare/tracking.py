"""MLflow tracking: the connection to the store (anchored at the repository root) and a stage's run life cycle.

No MLFLOW_TRACKING_URI -> a sqlite store `mlflow.db` and artifacts in `mlartifacts/` at the
repository root, found through DVC_ROOT so `dvc exp run --temp/--queue` runs are not lost in
a temporary workspace. Metrics are sent in batches, once per epoch, so logging stays cheap.
What each stage records (params, metrics, figures) is in records.py.
"""

import contextlib
import fcntl
import functools
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import TrackingError, first_line
from .process import alive, signals_deferred

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
BATCH_LIMIT = 1000  # MLflow's maximum number of metrics per log_batch call
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")
# MLflow's marker of an experiment's kind: model training, not GenAI development. MLflow 3.17's UI reads it where
# its GenAI / Model training toggle is off; with the toggle, the view comes from the link (`ui_link`).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


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


def run_tags(stage: str, params_file="params.yaml") -> dict:
    import socket

    tags = {"dvc.stage": os.environ.get("DVC_STAGE", stage), "git.commit": git_commit(),
            "mlflow.source.git.commit": git_commit(), "host": socket.gethostname(), "pid": str(os.getpid()),
            "params.sha256": hashlib.sha256(Path(params_file).read_bytes()).hexdigest()[:16]}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def configure_mlflow_client():
    """For this process: fail within seconds instead of retrying for minutes (where the user has not chosen
    otherwise: MLflow reads these from the environment at every request), and keep MLflow's
    database-creation log ("Creating initial MLflow database tables...") off stderr, where it would read as
    noise before a stage's own one-line error. Called by `connect`, before the first Tracker."""
    import logging

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def connect(settings) -> "Tracker | None":
    """The stage's tracker for params.yaml's `tracking` section: None when tracking is off; otherwise this
    process's MLflow client is configured (configure_mlflow_client) and connected to the experiment."""
    if not settings.enabled:
        return None
    configure_mlflow_client()
    return Tracker(settings.experiment)


def check_scheme(uri: str):
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        raise TrackingError(f"MLflow tracking at {uri} failed: unsupported scheme '{scheme}://' "
                            f"(use one of {', '.join(s + '://' for s in TRACKING_SCHEMES)}; check "
                            "MLFLOW_TRACKING_URI, or set tracking.enabled: false)")


def _timed(method):
    """Add the time a Tracker method takes to `tracker.seconds` (the outermost call only); an interrupt
    waits for the call to end."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._depth += 1
        started = time.perf_counter()
        try:
            with signals_deferred():  # SIGTERM waits for the end of the call: the store stays usable
                return method(self, *args, **kwargs)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.seconds += time.perf_counter() - started

    return wrapper


class Tracker:
    """A connection to one MLflow experiment, through MLflow's client API. Fails fast, in one line, when the
    store is unreachable. `seconds`: the time spent talking to MLflow."""

    def __init__(self, experiment: str):
        self.uri = tracking_uri()
        check_scheme(self.uri)
        self.seconds, self._depth = 0.0, 0
        self.experiment_id = self._connect(experiment)

    @_timed
    def _connect(self, experiment: str) -> str:
        from mlflow.tracking import MlflowClient

        try:
            with _store_lock(self.uri):
                self.client = MlflowClient(self.uri)
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    created = self._create_experiment(experiment)
                    if created is not None:
                        return created
                    found = self.client.get_experiment_by_name(experiment)  # another process created it meanwhile
                if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # an experiment an earlier version created
                    self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                return found.experiment_id
        except Exception as error:  # MlflowException, connection errors, bad URIs: all one line
            remedy = "check MLFLOW_TRACKING_URI, or set tracking.enabled: false"
            if _is_default_store(self.uri):
                remedy = (f"if {STORE_FILE} is damaged, move it aside (mv {STORE_FILE} {STORE_FILE}.broken) and "
                          "run again to start a new store; or set tracking.enabled: false")
            raise TrackingError(f"MLflow tracking at {self.uri} failed: {first_line(error, 200)} ({remedy})") from None

    def _create_experiment(self, experiment: str) -> str | None:
        """The new experiment's id; None when another process created it first (two queue workers starting at
        once against one tracking server: the file lock serialises this only for the default sqlite store)."""
        from mlflow.exceptions import MlflowException

        location = (repo_root() / ARTIFACT_DIR).as_uri() if _is_default_store(self.uri) else None
        try:
            return self.client.create_experiment(experiment, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return None

    @_timed
    def start_run(self, run_name: str, params: dict, tags: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    @_timed
    def run_params(self, run_id) -> dict:
        return dict(self.client.get_run(run_id).data.params)

    @_timed
    def has_run(self, run_id) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException:
            return False

    @_timed
    def log_params(self, run_id, params: dict):
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id, values: dict, step=0):
        """Log {key: value} at `step`, in as few calls as MLflow allows."""
        self.log_metric_series(run_id, [(key, value, step) for key, value in values.items()])

    @_timed
    def log_metric_series(self, run_id, points):
        """Log (key, value, step) points in batches of at most BATCH_LIMIT."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(step)) for key, value, step in points]
        for start in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(run_id, metrics=metrics[start:start + BATCH_LIMIT])

    @_timed
    def logged_steps(self, run_id, key) -> set:
        """The steps at which metric `key` has been logged in the run."""
        return {metric.step for metric in self.client.get_metric_history(run_id, key)}

    @_timed
    def set_tags(self, run_id, tags: dict):
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    @_timed
    def log_artifact(self, run_id, path, artifact_path=None):
        self.client.log_artifact(run_id, str(path), artifact_path)

    @_timed
    def log_text(self, run_id, text, artifact_file):
        self.client.log_text(run_id, text, artifact_file)

    @_timed
    def log_dict(self, run_id, data, artifact_file):
        self.client.log_dict(run_id, data, artifact_file)

    @_timed
    def log_figure(self, run_id, figure, artifact_file):
        from .files import save_figure

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            save_figure(path, figure)
            self.log_artifact(run_id, path, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    @_timed
    def end_run(self, run_id, status="FINISHED"):
        self.client.set_terminated(run_id, status)

    def end_run_quietly(self, run_id, status):
        """end_run on the way out of a failure: a second failure must not hide the first."""
        try:
            self.end_run(run_id, status)
        except Exception as error:
            print(f"warning: could not mark MLflow run {run_id} {status}: {first_line(error)}")

    @_timed
    def reopen_run(self, run_id) -> bool:
        """Mark an interrupted run RUNNING again to go on logging into it; False if it is gone."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.update_run(run_id, status="RUNNING")
            return True
        except MlflowException:
            return False

    @_timed
    def mark_orphans_killed(self, stage: str, keep=None):
        """Runs of `stage` left RUNNING by a process on this host that no longer exists (SIGKILL)."""
        import socket

        host, stage = socket.gethostname(), os.environ.get("DVC_STAGE", stage)
        runs = self.client.search_runs([self.experiment_id], f"attributes.status = 'RUNNING' and "
                                       f"tags.`dvc.stage` = '{stage}' and tags.`host` = '{host}'")
        for run in runs:
            pid = int(run.data.tags.get("pid", "0") or 0)
            if run.info.run_id != keep and pid and not alive(pid):
                self.end_run(run.info.run_id, "KILLED")
                print(f"marked MLflow run {run.info.run_id} KILLED (its process {pid} is gone)")

    @_timed
    def log_model(self, run_id, model, example, registered_name=None):
        """Log with MLflow's PyTorch flavour: signature and input example (N x 1 x 28 x 28 float32).
        mlflow.pytorch.log_model takes no run id: it logs into the fluent API's active run."""
        import mlflow
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        # Contiguous weights: a channels_last model (the CNN) made torch.export's archive writer warn
        # "No complete tensor found in the group!" for every non-contiguous weight.
        model = model.eval().to("cpu", memory_format=torch.contiguous_format)
        with torch.inference_mode():
            output = model(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output)
        mlflow.set_tracking_uri(self.uri)  # the fluent API's store (MLflow also exports it to the environment)
        with mlflow.start_run(run_id=run_id, nested=False):
            # Explicit requirements: MLflow's inference of them costs ~10 s per model.
            requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
            info = mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                            pip_requirements=requirements,
                                            registered_model_name=registered_name)
        return info.model_uri


@contextlib.contextmanager
def stage_run(tracker: Tracker | None, stage: str, run_name: str, params: dict, tags=None, resume_run_id=None):
    """The MLflow run of one stage, from start to final status; yields its id (None without a tracker).

    Goes on in `resume_run_id` when that run still exists (an interrupted training), else starts a new run
    with `params` and the stage's tags. Runs of this stage left RUNNING by a process that is gone are marked
    KILLED first. The run ends FINISHED when the block completes (every output written), KILLED on
    SIGINT/SIGTERM, FAILED on any other error."""
    if tracker is None:
        yield None
        return
    run_id = resume_run_id
    if run_id and not tracker.reopen_run(run_id):
        print(f"MLflow run {run_id} of the interrupted attempt is not in {tracker.uri}; starting a new run")
        run_id = None
    tracker.mark_orphans_killed(stage, keep=run_id)
    if run_id is None:
        run_id = tracker.start_run(run_name, params, {**run_tags(stage), **(tags or {})})
    else:
        tracker.set_tags(run_id, {"pid": str(os.getpid())})
    try:
        yield run_id
    except KeyboardInterrupt:  # SIGINT or SIGTERM (process.raise_on_sigterm)
        tracker.end_run_quietly(run_id, "KILLED")
        raise
    except BaseException:
        tracker.end_run_quietly(run_id, "FAILED")
        raise
    tracker.end_run(run_id)


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
            logged = self.tracker.logged_steps(self.run_id, "val/accuracy")
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
                                f"{len(self.unsent)} metric points of epochs {epochs} were not logged; run the "
                                "stage again once MLflow is reachable (it resumes from the saved state: no epoch "
                                "is trained again)")


def existing_runs(tracker: Tracker | None, run_ids: dict) -> dict:
    """The {model: run id} of runs that are in the tracker's store; the others are left out with a warning
    (trained with tracking off, or with another MLFLOW_TRACKING_URI)."""
    if tracker is None:
        return {}
    found = {}
    for name, run_id in run_ids.items():
        if run_id and tracker.has_run(run_id):
            found[name] = run_id
        elif run_id:
            print(f"warning: MLflow run {run_id} of {name} is not in {tracker.uri} (was it trained with another "
                  "MLFLOW_TRACKING_URI?); it is left out of this run's links")
    return found


def ui_link(experiment: str, port: int, host="127.0.0.1") -> str:
    """The MLflow UI's address of `experiment` in its model-training view (MLflow 3.17 opens an experiment on its
    GenAI overview unless the link asks for `workflowType=machine_learning`); the experiments list when the
    default store does not hold the experiment yet."""
    base = f"http://{host}:{port}/#/experiments"
    from mlflow.tracking import MlflowClient

    found = None
    if (repo_root() / STORE_FILE).is_file():
        with contextlib.suppress(Exception):
            found = MlflowClient(tracking_uri()).get_experiment_by_name(experiment)
    return f"{base}/{found.experiment_id}?workflowType=machine_learning" if found else base


if __name__ == "__main__":  # `python -m fashion_compare.tracking <experiment> <port>`: the link make mlflow-ui prints
    import sys

    print(f"MLflow UI: {ui_link(sys.argv[1], int(sys.argv[2]))}")
