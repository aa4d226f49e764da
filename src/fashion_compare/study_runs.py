"""A seed study's driver: the seeds without current results go to the engine (engine.py: Dask tasks, on this
machine or a cluster), and each seed's folder (seed_folders.py) is written as soon as it comes back. The
aggregate is study_aggregate.py's, the statistics study.py's.
"""

import os
import time
from pathlib import Path

from . import engine, seed_task, study
from .errors import PipelineError, first_line
from .files import read_json
from .seed_folders import (
    Recipe,
    read_run_file,
    record_failure,
    results_current,
    seeds_named,
    write_seed_folder,
)
from .sessions import SessionClock
from .tools import code_fingerprint, cpu_label, git


def check_repository_root(params_path: str):
    if not Path("dvc.yaml").is_file() or not Path(params_path).is_file():
        raise PipelineError(f"{Path.cwd()}: no dvc.yaml or {params_path} here; run the study from the repository "
                            "root (where dvc.yaml is)")


def check_arguments(seeds: list, jobs: int):
    """Before any work: seeds listed once each and not negative, at least one job."""
    study.check_distinct(seeds, "--seeds")
    if any(seed < 0 for seed in seeds):
        raise PipelineError(f"--seeds: {min(seeds)} is negative; a seed is 0 or more")
    if jobs < 1:
        raise PipelineError(f"--jobs {jobs}: at least 1 seed at a time")


def check_committed():
    if git("status", "--porcelain", "--untracked-files=no", "--", "src", "stages", "dvc.yaml", "params.yaml"):
        raise PipelineError("src/, stages/, dvc.yaml or params.yaml has uncommitted changes; commit them first "
                            "(a study's experiments run the committed code, with only the seed changed)")


def check_cluster(client, address: str, commit: str, params: dict) -> tuple[str, str | None]:
    """What a cluster's tasks need, before any of them trains: the commit on the shared git remote, a shared
    MLflow server (not a file of this machine), a default DVC remote, workers offering seed=1. Returns (the git
    remote, the MLflow URI)."""
    from .tools import dvc

    try:
        remote = git("remote", "get-url", "origin").strip()
        git("fetch", "--quiet", "origin")
    except Exception:  # noqa: BLE001 - no origin, or it cannot be reached
        raise PipelineError("a cluster study needs the shared git remote `origin` (workers clone the study's commit "
                            "from it); add it, push, and run again") from None
    if not git("branch", "--remotes", "--contains", commit).strip():
        raise PipelineError(f"commit {commit[:12]} is not on origin ({remote}); push it first (git push): workers "
                            "clone the study's commit from there")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if (params.get("tracking") or {}).get("enabled", True):
        if not uri or uri.split(":", 1)[0] in ("sqlite", "file") or "://" not in uri:
            raise PipelineError(f"a cluster study logs to a shared MLflow server: set MLFLOW_TRACKING_URI to it "
                                f"(now {uri or 'unset'}; a file store would stay in each worker's scratch folder), "
                                "or tracking.enabled: false")
    if not dvc("remote", "default", check=False).stdout.strip():
        raise PipelineError("a cluster study needs a default DVC remote that every worker reaches (dvc remote "
                            "add -d <name> <url>, committed): workers fetch the run cache and push outputs there")
    if not engine.seed_workers(client):
        raise PipelineError(f"Dask scheduler at {address}: no worker offers the resource seed=1; start "
                            "workers with `dask worker <address> --resources seed=1`")
    return remote, uri


class SeedLedger:
    """What the driver records as seeds come back: each folder written at once, failures kept with their log."""

    def __init__(self, recipe: Recipe, params: dict, fingerprint: str, session: SessionClock):
        self.recipe, self.params, self.fingerprint = recipe, params, fingerprint
        self.failed, self.started, self.session = {}, time.perf_counter(), session

    def done(self, task: seed_task.SeedTask, outcome):
        seed = task.seed
        if isinstance(outcome, BaseException):
            self.fail(seed, f"error: seed {seed}: {first_line(outcome, 240)}")
        elif not outcome.ok:
            self.fail(seed, outcome.log + f"\n{outcome.error}\n")
        elif outcome.fingerprint != self.fingerprint:
            self.fail(seed, f"error: seed {seed} ran code {outcome.fingerprint} on {outcome.worker}, not this "
                            f"study's {self.fingerprint}")
        else:
            write_seed_folder(self.recipe.seed_dir(seed), outcome.files)
            self.session.write()
            seed_task.forget_scratch(task)
            top = read_json(self.recipe.seed_dir(seed) / "headline.json")
            accuracy = ", ".join(f"{m} {v['test_accuracy']:.4f}" for m, v in top["models"].items())
            gains = ", ".join(f"{m} {100 * v['accuracy_gain']:+.2f}" for m, v in top["contenders"].items())
            print(f"seed {seed}: finished on {outcome.worker} after {(time.perf_counter() - self.started) / 60:.1f} "
                  f"min: test accuracy {accuracy}; gain over {top['baseline']}, points: {gains}", flush=True)

    def fail(self, seed: int, output: str):
        current = results_current(self.recipe.seed_dir(seed), self.params, self.fingerprint)
        self.failed[seed] = record_failure(self.recipe, seed, output, keep_result=current)
        self.session.write()
        print(f"seed {seed}: FAILED: {self.failed[seed]}", flush=True)


def stale_seeds(recipe: Recipe, seeds: list, fingerprint: str) -> dict:
    """{seed: the code it ran} of the seeds whose committed results another code made (the code fingerprint)."""
    stale = {}
    for seed in seeds:
        folder = recipe.seed_dir(seed)
        if (folder / "run.json").is_file() and (folder / "predictions.csv").is_file():
            code = read_run_file(folder).code
            if code != fingerprint:
                stale[seed] = code
    return stale


def run_seeds(recipe: Recipe, seeds: list, jobs: int, params: dict, address: str | None = None,
              rerun_stale=False) -> dict:
    """Run the seeds that have no current results as Dask tasks (a LocalCluster of `jobs` workers, or the
    cluster at `address`); returns {seed: why} for those that failed. Seeds whose results another code made
    are stale: said in one line and left as they are, unless `rerun_stale`."""
    check_arguments(seeds, jobs)
    fingerprint, applied = code_fingerprint(), recipe.apply(params)
    stale = stale_seeds(recipe, seeds, fingerprint)
    if stale and not rerun_stale:
        codes = ", ".join(sorted(set(map(str, stale.values()))))
        print(f"{recipe.study_file}: stale: {seeds_named(stale)[0]} ran code {codes}, this checkout's is "
              f"{fingerprint}; its figures stay those of that code until `make study RECIPE={recipe.name} "
              "RERUN_STALE=1` trains them again", flush=True)
    todo = [seed for seed in seeds if not results_current(recipe.seed_dir(seed), applied, fingerprint)
            and (rerun_stale or seed not in stale)]
    for seed in sorted(set(seeds) - set(todo)):
        (recipe.seed_dir(seed) / "failed.json").unlink(missing_ok=True)
        print(f"seed {seed}: done already ({recipe.seed_dir(seed)})")
    if not todo:
        return {}
    check_committed()
    commit = git("rev-parse", "HEAD").strip()
    session = SessionClock(recipe.sessions_file, "make study")
    ledger = SeedLedger(recipe, applied, fingerprint, session)
    session.begin(min(jobs, len(todo)) if address is None else None, cpu_label())
    with engine.open_cluster(address, min(jobs, len(todo))) as client:
        if address is None:
            settings = engine.local_task_settings(min(jobs, len(todo)))
        else:
            remote, uri = check_cluster(client, address, commit, params)
            settings = {"origin": remote, "workspace": None, "mlflow_uri": uri, "threads": None}
        stop = f"fashion-study-stop-{commit[:12]}-{os.getpid()}"
        tasks = [seed_task.SeedTask(seed, recipe, commit, stop_event=stop, **settings) for seed in todo]
        print(f"running {seeds_named(todo)[0]}, {min(jobs, len(todo)) if address is None else 'on'} "
              f"{'at a time' if address is None else address}", flush=True)
        try:
            engine.run_tasks(client, seed_task.run_seed_task, tasks, ledger.done,
                             key=lambda task: recipe.experiment_name(task.seed))
        except KeyboardInterrupt:
            left = [seed for seed in todo if seed not in ledger.failed and
                    not results_current(recipe.seed_dir(seed), applied, fingerprint)]
            print(f"interrupted: finished seeds kept in {recipe.seeds_dir}; "
                  f"{seeds_named(left)[0] if left else 'none'} left, each to resume from its last finished epoch "
                  "at the next make study", flush=True)
            raise
    return ledger.failed
