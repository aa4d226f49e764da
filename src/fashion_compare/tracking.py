"""MLflow tracking: a stage's connection to its experiment (Tracker) and its run's life cycle (stage_run), and
the training's per-epoch logger. Where the store is: mlflow_store.py. Metrics are sent in batches, once per
epoch, so logging stays cheap. What each stage records (params, metrics, figures) is in records.py.
"""

import contextlib
import functools
import os
import tempfile
import time
from pathlib import Path

from .errors import TrackingError, first_line
from .mlflow_store import (
    ARTIFACT_DIR,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    STORE_FILE,
    check_scheme,
    configure_mlflow_client,
    is_default_store,
    repo_root,
    run_tags,
    store_lock,
    tracking_uri,
)
from .process import alive, signals_deferred

BATCH_LIMIT = 1000  # MLflow's maximum number of metrics per log_batch call

def connect(settings) -> "Tracker | None":
    """The stage's tracker for params.yaml's `tracking` section: None when tracking is off; otherwise this
    process's MLflow client is configured (configure_mlflow_client) and connected to the experiment."""
    if not settings.enabled:
        return None
    configure_mlflow_client()
    return Tracker(settings.experiment)


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
            with store_lock(self.uri):
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
            if is_default_store(self.uri):
                remedy = (f"if {STORE_FILE} is damaged, move it aside (mv {STORE_FILE} {STORE_FILE}.broken) and "
                          "run again to start a new store; or set tracking.enabled: false")
            raise TrackingError(f"MLflow tracking at {self.uri} failed: {first_line(error, 200)} ({remedy})") from None

    def _create_experiment(self, experiment: str) -> str | None:
        """The new experiment's id; None when another process created it first (two queue workers starting at
        once against one tracking server: mlflow_store.store_lock serialises this only for sqlite stores)."""
        from mlflow.exceptions import MlflowException

        location = (repo_root() / ARTIFACT_DIR).as_uri() if is_default_store(self.uri) else None
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


def mark_orphans_killed(tracker: Tracker, stage: str, keep=None):
    """Runs of `stage` left RUNNING by a process on this host that no longer exists (SIGKILL): KILLED."""
    import socket

    host, stage = socket.gethostname(), os.environ.get("DVC_STAGE", stage)
    with signals_deferred():
        runs = tracker.client.search_runs([tracker.experiment_id], f"attributes.status = 'RUNNING' and "
                                          f"tags.`dvc.stage` = '{stage}' and tags.`host` = '{host}'")
        for run in runs:
            pid = int(run.data.tags.get("pid", "0") or 0)
            if run.info.run_id != keep and pid and not alive(pid):
                tracker.end_run(run.info.run_id, "KILLED")
                print(f"marked MLflow run {run.info.run_id} KILLED (its process {pid} is gone)")


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
    mark_orphans_killed(tracker, stage, keep=run_id)
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
                                "stage again once MLflow is reachable (in this workspace it resumes from the saved "
                                "state: no epoch is trained again)")


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
