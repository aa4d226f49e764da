"""One seed's task on a Dask worker (engine.py runs it): clone the study's commit, run the seed's pipeline as a
DVC experiment, collect its result files.

A local task runs the seed in a scratch clone of the workspace's commit (.dvc/tmp/study/<recipe>-seed-<n>) that
shares the workspace's DVC cache and MLflow store: a finished stage lands in the run cache at once, a rerun
restores it, and the experiment's ref is pushed to the workspace (`dvc exp show` lists it). The scratch clone is
kept until the driver has written the seed's folder: a study killed mid-seed resumes that seed from its last
finished epoch (the train stage's resume state is in the clone).

On a cluster, the task clones the study's commit from the shared git remote into the worker's own directory,
checks that it can write to the shared DVC remote, runs with `--pull` (DVC's run cache and the outputs of the
stages it holds come from that remote: a seed somebody already ran is restored, not retrained), pushes outputs
and run cache, and logs to the shared MLflow server. Workers never push to git; the driver never reads their
disks. The driver (study_runs.py) writes each seed's folder. A cluster task that fails or is stopped
mid-training keeps the train stage's resume states (the clone's .resume/) on the DVC remote, under
study-resume/<recipe>-seed-<n>/, and the seed's next task, on whichever worker, starts from them: as on one
machine, at most the epoch in flight is lost.
"""

import contextlib
import functools
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import dvc_remote
from .errors import PipelineError
from .seed_folders import Recipe, seed_files, stage_error
from .tools import DVC, code_fingerprint, git, start_tool, tool_env

STOP_POLL_SECONDS = 1.0
SCRATCH_DIR = Path(".dvc/tmp/study")  # local tasks' scratch clones (DVC collects no stage under .dvc/)
DELETING = ".deleting"  # a collected scratch clone's name while it is deleted


@dataclass(frozen=True)
class SeedTask:
    """What a worker needs to run one seed."""

    seed: int
    recipe: Recipe
    commit: str
    origin: str  # the git repository to clone: the workspace (local) or the shared remote (cluster)
    workspace: str | None  # local: the workspace, whose DVC cache and MLflow store the task shares
    mlflow_uri: str | None
    threads: int | None  # the pipeline's threads; None: the worker's
    stop_event: str


@dataclass(frozen=True)
class SeedOutcome:
    """What a seed task returns: the seed folder's files, or why it failed (the stage's line, its whole log)."""

    seed: int
    worker: str
    fingerprint: str = ""
    files: dict = field(default_factory=dict)
    error: str = ""
    log: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def scratch_path(root, task: SeedTask) -> Path:
    return Path(root) / f"{task.recipe.name}-seed-{task.seed}"


def _steps(task: SeedTask, scratch: Path, resuming: bool) -> list:
    """(step, required): a command to run in `scratch` (the clone's first two run in its parent folder), or a
    check of the DVC remote, a function returning why it failed ("" when it did not)."""
    name, dvc = task.recipe.experiment_name(task.seed), str(DVC)
    steps = [] if resuming else [
        (["git", "clone", "--quiet", "--no-checkout", *(["--shared"] if task.workspace else []), task.origin,
          str(scratch)], True),
        (["git", "-C", str(scratch), "checkout", "--quiet", task.commit], True)]
    if task.workspace:
        steps.append(([dvc, "cache", "dir", "--local", str(Path(task.workspace) / ".dvc" / "cache")], True))
    else:
        steps.append((functools.partial(dvc_remote.check_remote_writable, scratch), True))
        steps.append((functools.partial(dvc_remote.restore_resume_states, scratch, scratch.name), True))
    # On a cluster, --pull: the DVC remote's run cache first, then each stage found there restored with its
    # outputs pulled (without them DVC's run cache cannot restore a stage, and reruns it); what is not there runs.
    if not (resuming and dvc_remote.experiment_ref(scratch, name)):  # else it ran already
        steps.append(([dvc, "exp", "run", *([] if task.workspace else ["--pull"]), "-S", f"seed={task.seed}",
                       *task.recipe.set_options(), "-n", name], True))
    if not task.workspace:
        steps.append(([dvc, "push", "--quiet", "--run-cache"], True))
        steps.append((functools.partial(dvc_remote.push_uncached_outputs, scratch), True))
    return steps


def _run(command, cwd, env, stop, log_path) -> int:
    """Run `command`, appending its output to the log; stop it when `stop` is set (the driver gave up)."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = start_tool(command, cwd, env, log)
        while process.poll() is None:
            if stop.is_set():
                process.send_signal(signal.SIGTERM)  # dvc stops its stage (the stage stops with its parent)
                with contextlib.suppress(Exception):
                    process.wait(timeout=60)
                process.kill()
                raise PipelineError("stopped: the study's driver was interrupted")
            time.sleep(STOP_POLL_SECONDS)
    return process.returncode


def run_seed_task(task: SeedTask) -> SeedOutcome:
    """On a Dask worker: the seed's pipeline in its scratch clone (see the module's docstring)."""
    from distributed import Event, get_worker

    worker = get_worker()
    root = Path(task.workspace) / SCRATCH_DIR if task.workspace else Path(worker.local_directory)
    scratch = scratch_path(root, task)
    log = scratch.with_name(scratch.name + ".log")
    resuming = bool(task.workspace) and (scratch / ".git").is_dir() and \
        git("rev-parse", "HEAD", cwd=scratch).strip() == task.commit
    if not resuming:
        shutil.rmtree(scratch, ignore_errors=True)
        log.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    env = tool_env(threads=task.threads or worker.state.nthreads)
    if task.mlflow_uri:
        env["MLFLOW_TRACKING_URI"] = task.mlflow_uri
    finished = False  # True: the seed's files are collected, or its resume state kept
    try:
        for command, required in _steps(task, scratch, resuming):
            if callable(command):  # a check of the DVC remote
                if why := command():
                    return SeedOutcome(task.seed, worker.address, error=why, log=log.read_text())
                continue
            cwd = root if command[:2] in (["git", "clone"], ["git", "-C"]) else scratch
            if _run(command, cwd, env, Event(task.stop_event), log) != 0 and required:
                output = log.read_text()
                if command[0] == "git":
                    raise RuntimeError(f"seed {task.seed}: {' '.join(command[:2])} failed: {output.strip()[-300:]}")
                kept = "" if task.workspace else dvc_remote.keep_resume_states(scratch, scratch.name)
                finished = True  # what it trained is kept
                return SeedOutcome(task.seed, worker.address, error=stage_error(output) + (
                    f" ({kept}: the seed's rerun goes on from its last finished epoch)" if kept else ""), log=output)
        if task.workspace:  # the experiment, for `dvc exp show` in the workspace
            ref = dvc_remote.experiment_ref(scratch, task.recipe.experiment_name(task.seed))
            git("push", "--quiet", "--force", "origin", f"{ref}:{ref}", cwd=scratch)
        else:
            dvc_remote.forget_resume_states(scratch, scratch.name)
        source = {"experiment": task.recipe.experiment_name(task.seed), "rev": task.commit, "worker": worker.address}
        fingerprint = code_fingerprint(root=scratch)
        files = seed_files(task.seed, lambda path: (scratch / path).read_text(encoding="utf-8"), fingerprint, source)
        finished = True
        return SeedOutcome(task.seed, worker.address, fingerprint, files)
    finally:
        if not task.workspace:
            if not finished:  # stopped, or an error of its own: what it trained is kept for its rerun
                with contextlib.suppress(Exception):
                    dvc_remote.keep_resume_states(scratch, scratch.name)
            shutil.rmtree(scratch, ignore_errors=True)
            log.unlink(missing_ok=True)


def forget_scratch(task: SeedTask):
    """A local seed collected: its scratch clone and log go. The clone is first renamed out of the seed's way
    (atomic), then deleted with whatever an interrupted deletion left before it: a signal mid-way never leaves
    half a clone under the seed's name for a rerun to resume in."""
    if task.workspace:
        scratch = scratch_path(Path(task.workspace) / SCRATCH_DIR, task)
        scratch.with_name(scratch.name + ".log").unlink(missing_ok=True)
        for leftover in scratch.parent.glob(f"*{DELETING}"):  # what an interrupted collection left
            shutil.rmtree(leftover, ignore_errors=True)
        if scratch.is_dir():
            deleting = scratch.rename(scratch.with_name(scratch.name + DELETING))
            shutil.rmtree(deleting, ignore_errors=True)
