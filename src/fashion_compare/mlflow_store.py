"""The MLflow store: where it is (anchored at the repository root), how a run is tagged, the client's settings,
and the UI's link to an experiment.

No MLFLOW_TRACKING_URI -> a sqlite store `mlflow.db` and artifacts in `mlartifacts/` at the repository root,
found through DVC_ROOT so `dvc exp run --temp/--queue` runs are not lost in a temporary workspace.
`python -m fashion_compare.mlflow_store <experiment> <port>` prints the link `make mlflow-ui` opens.
"""

import contextlib
import fcntl
import hashlib
import os
import subprocess
from pathlib import Path

from .errors import TrackingError

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
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


def is_default_store(uri: str) -> bool:
    return uri == f"sqlite:///{repo_root() / STORE_FILE}"


@contextlib.contextmanager
def store_lock(uri):
    """Serialise creating a sqlite store: concurrent schema migrations fail ("Online migration expected to match
    one row"). The lock is a file beside the database, so the seeds of a study, each in its scratch clone with
    the workspace's store in MLFLOW_TRACKING_URI, take the same one."""
    database = sqlite_path(uri)
    if database is None or not database.parent.is_dir():  # no folder: MLflow's own error says so
        yield
        return
    with open(database.with_name(f".{database.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite tracking URI; None for other stores and an in-memory database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not uri.startswith("sqlite:"):
        return None
    try:
        database = make_url(uri).database
    except ArgumentError:
        return None
    return Path(database) if database and database != ":memory:" else None


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


def check_scheme(uri: str):
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        raise TrackingError(f"MLflow tracking at {uri} failed: unsupported scheme '{scheme}://' "
                            f"(use one of {', '.join(s + '://' for s in TRACKING_SCHEMES)}; check "
                            "MLFLOW_TRACKING_URI, or set tracking.enabled: false)")


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


if __name__ == "__main__":  # the link make mlflow-ui prints
    import sys

    print(f"MLflow UI: {ui_link(sys.argv[1], int(sys.argv[2]))}")
