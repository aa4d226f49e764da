"""The tool layer's DVC remote and experiment refs, for a seed's task on a cluster (seed_task.py): a remote that
takes a write, a push that leaves no object of the run cache behind, and a training's resume states kept on the
remote between tasks of the same seed (under study-resume/<name>/), whichever worker runs the next one.
"""

import uuid
from pathlib import Path

from .errors import first_line
from .tools import git

RESUME_DIR = ".resume"  # the train stage's resume states, in the clone (stages/train.py)
REMOTE_RESUME_DIR = "study-resume"  # a cluster task's resume states, on the DVC remote


def check_remote_writable(clone: Path) -> str:
    """Before a cluster task trains: its default DVC remote takes a write (a probe file, then removed), so that a
    remote the worker cannot write to fails now, not after the training it would have lost. Returns why not
    ("" when it can)."""
    from dvc.repo import Repo

    try:
        with Repo(str(clone)) as repo:
            remote = repo.cloud.get_remote(command="push")
            probe = remote.fs.join(remote.path, f".write-probe-{uuid.uuid4().hex}")
            remote.fs.makedirs(remote.path, exist_ok=True)  # as a push would (a no-op on object stores)
            remote.fs.pipe_file(probe, b"")
            remote.fs.rm_file(probe)
    except Exception as error:  # noqa: BLE001 - whatever the remote's filesystem raises
        return (f"error: the DVC remote cannot be written from this worker ({first_line(error, 120)}); a seed's "
                "outputs and run cache go there: give the workers write access (or another default remote) and "
                "run again")
    return ""


def push_uncached_outputs(clone: Path) -> str:
    """After `dvc push --run-cache`: every object of the clone's cache to the DVC remote, the `cache: false`
    outputs (metrics, plot data) among them. DVC saves those in the run cache but its push leaves them behind,
    and without them no other clone can restore a stage from the run cache (it runs the stage again). The
    clone's cache holds this task's objects only. Returns why not ("" when pushed)."""
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    try:
        with Repo(str(clone)) as repo:
            failed = repo.cloud.push({HashInfo("md5", oid) for oid in repo.cache.local.all()}).failed
    except Exception as error:  # noqa: BLE001 - whatever the remote's filesystem raises
        return f"error: pushing the run cache's outputs to the DVC remote failed ({first_line(error, 120)})"
    return f"error: {len(failed)} of the run cache's outputs could not be pushed to the DVC remote" if failed else ""


def _resume_folder(repo, name: str):
    remote = repo.cloud.get_remote(command="push")
    return remote.fs, remote.fs.join(remote.path, REMOTE_RESUME_DIR, name)


def keep_resume_states(clone: Path, name: str) -> str:
    """A cluster task that did not finish: the resume states its training left in the clone go to the DVC remote
    (under `name`), where the next task of the same seed finds them (the clone goes with the task). Returns what
    happened, for the log."""
    from dvc.repo import Repo

    states = sorted((clone / RESUME_DIR).glob("*.pt"))
    if not states:
        return ""
    try:
        with Repo(str(clone)) as repo:
            fs, folder = _resume_folder(repo, name)
            fs.makedirs(folder, exist_ok=True)
            for state in states:
                fs.put_file(str(state), fs.join(folder, state.name))
    except Exception as error:  # noqa: BLE001 - whatever the remote's filesystem raises
        return f"its resume state could not be kept on the DVC remote ({first_line(error, 120)})"
    return f"its resume state ({', '.join(state.stem for state in states)}) is kept on the DVC remote"


def restore_resume_states(clone: Path, name: str) -> str:
    """Before a cluster task trains: the resume states an earlier task kept on the DVC remote under `name`, into
    the clone's .resume/ (the train stage resumes from one only when its config, data and code match). Returns
    "" (a step that cannot fail the task: without them the seed trains from its first epoch)."""
    from dvc.repo import Repo

    with Repo(str(clone)) as repo:
        fs, folder = _resume_folder(repo, name)
        if fs.exists(folder):
            (clone / RESUME_DIR).mkdir(exist_ok=True)
            for path in fs.ls(folder, detail=False):
                fs.get_file(path, str(clone / RESUME_DIR / Path(path).name))
    return ""


def forget_resume_states(clone: Path, name: str):
    """The seed finished: what earlier tasks kept on the DVC remote under `name` goes."""
    from dvc.repo import Repo

    with Repo(str(clone)) as repo:
        fs, folder = _resume_folder(repo, name)
        if fs.exists(folder):
            fs.rm(folder, recursive=True)


def experiment_ref(repository: Path, name: str) -> str | None:
    """The ref of the experiment `name` in `repository` (refs/exps/<baseline>/<name>), or None."""
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps", cwd=repository).split()
    return next((ref for ref in refs if len(ref.split("/")) == 5 and ref.split("/")[4] == name), None)
