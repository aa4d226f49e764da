"""A seed study on a Dask cluster: each missing seed is one task, run by a worker in a scratch directory.

The switch is Dask's own: DASK_SCHEDULER_ADDRESS (or `make study CLUSTER=tcp://host:8786`). Without it the
study runs on this machine through DVC's queue (study_runs.py). A seed task is self-contained: on the worker
it clones the study's exact commit from the shared git remote, pulls DVC's run cache from the shared DVC
remote (a seed somebody already ran is restored, not retrained), runs the seed's pipeline with the worker's
threads, pushes its outputs and run cache to the DVC remote, logs to the shared MLflow server, and returns
the seed's result files; the driver writes metrics/study/seeds/<seed>/. Workers never push to git, the driver
never reads their disks. One seed per worker at a time: tasks ask for the worker resource `seed=1`.

Faults: a worker that dies mid-seed -> the scheduler hands the task to another worker (Dask's
allowed-failures, and `retries` for errors in the task itself); the driver interrupted -> an Event tells
every task to stop its pipeline, the futures are cancelled, finished seeds are kept; a scheduler that cannot
be reached -> one line naming the address; a seed whose pipeline fails -> named in failed_seeds, with its log.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import PREDICTIONS_FILE
from .errors import PipelineError, first_line

RESOURCE = {"seed": 1}  # start workers with `dask worker ... --resources seed=1` (GPU workers: also GPU=1)
RETRIES = 2  # errors raised by the task itself (a git or DVC remote that hiccups); a dead worker is Dask's
CONNECT_TIMEOUT = "10s"
STOP_POLL_SECONDS = 1.0


def scheduler_address(cli_address=None):
    """The cluster to use: `--cluster`, else Dask's own configuration (DASK_SCHEDULER_ADDRESS,
    scheduler-address in ~/.config/dask); None: no cluster, the local DVC queue."""
    if cli_address:
        return cli_address
    if not os.environ.get("DASK_SCHEDULER_ADDRESS"):
        return None
    import dask

    return dask.config.get("scheduler-address", None)


def _die_with_parent():
    """In the child, before exec: SIGTERM when the worker process that started it dies (Linux)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run(command, cwd, env, stop_event=None, log=None):
    """Run `command`, appending its output to `log`; stop it when `stop_event` is set (the driver gave up)."""
    with open(log, "a") as output:
        output.write(f"$ {' '.join(command)}\n")
        output.flush()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        while process.poll() is None:
            if stop_event is not None and stop_event.is_set():
                process.send_signal(signal.SIGTERM)  # dvc stops its stage (the stage stops with its parent)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                raise PipelineError("stopped: the study's driver was interrupted")
            time.sleep(STOP_POLL_SECONDS)
    return process.returncode


def run_seed_task(seed: int, commit: str, git_remote: str, mlflow_uri: str | None, stop_event_name: str) -> dict:
    """On a Dask worker: the seed's pipeline in a scratch clone of `commit`. Returns {"seed", "ok", "files" (the
    seed folder), "worker", "fingerprint"} or, when the pipeline failed, {"ok": False, "error", "log"}."""
    from distributed import Event, get_worker

    from .study_runs import code_fingerprint, seed_files, stage_error

    worker = get_worker()
    stop = Event(stop_event_name)
    scratch = Path(tempfile.mkdtemp(prefix=f"seed-{seed}-", dir=worker.local_directory))
    log = scratch.parent / f"{scratch.name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(OMP_NUM_THREADS=str(worker.state.nthreads),  # the stages' `threads: auto` reads it
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               GIT_TERMINAL_PROMPT="0")  # a remote that asks for a password fails instead of waiting
    if mlflow_uri:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri
    dvc = str(Path(sys.executable).parent / "dvc")
    try:
        steps = [(["git", "clone", "--quiet", "--no-checkout", git_remote, str(scratch)], scratch.parent, True),
                 (["git", "checkout", "--quiet", commit], scratch, True),
                 ([dvc, "pull", "--quiet", "--run-cache"], scratch, False),  # missing outputs are rebuilt
                 ([dvc, "exp", "run", "-S", f"seed={seed}"], scratch, True),
                 ([dvc, "push", "--quiet", "--run-cache"], scratch, True)]
        for command, cwd, required in steps:
            returncode = _run(command, cwd, env, stop, log)
            if returncode != 0 and required:
                output = log.read_text()
                if command[:2] == ["git", "clone"] or command[1] == "checkout":
                    raise RuntimeError(f"seed {seed}: {' '.join(command[:2])} failed: {output.strip()[-300:]}")
                return {"seed": seed, "ok": False, "error": stage_error(output), "log": output,
                        "worker": worker.address}
        fingerprint = code_fingerprint(root=scratch)
        files = seed_files(seed, lambda path: (scratch / path).read_text(encoding="utf-8"),
                           (scratch / PREDICTIONS_FILE).read_text(encoding="utf-8"), fingerprint,
                           {"experiment": f"cluster seed {seed}", "rev": commit, "baseline": commit,
                            "worker": worker.address})
        return {"seed": seed, "ok": True, "files": files, "worker": worker.address, "fingerprint": fingerprint}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        log.unlink(missing_ok=True)


def connect(address: str):
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as error:
        raise PipelineError(f"Dask scheduler at {address}: cannot connect ({first_line(error, 160)}); start it "
                            "(dask scheduler), or unset DASK_SCHEDULER_ADDRESS / CLUSTER to run locally") from None


def dashboard(client) -> str | None:
    """The scheduler's dashboard link, when it serves one (`dask scheduler` does when bokeh is installed)."""
    try:
        return client.dashboard_link
    except (KeyError, AttributeError):
        return None


def check_pushed(commit: str) -> str:
    """The shared git remote (origin) and that it holds `commit`: workers check it out from there."""
    try:
        remote = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True,
                                check=True).stdout.strip()
        subprocess.run(["git", "fetch", "--quiet", "origin"], capture_output=True, check=True)
    except subprocess.CalledProcessError:
        raise PipelineError("a cluster study needs the shared git remote `origin` (workers clone the study's commit "
                            "from it); add it, push, and run again") from None
    branches = subprocess.run(["git", "branch", "--remotes", "--contains", commit], capture_output=True,
                              text=True).stdout
    if not branches.strip():
        raise PipelineError(f"commit {commit[:12]} is not on origin ({remote}); push it first (git push): workers "
                            "clone the study's commit from there")
    return remote


class ClusterRunner:
    """Sends seeds to the cluster and records each result as it comes back (study_runs' SeedRunner records)."""

    def __init__(self, runner, address: str):
        self.runner, self.address = runner, address

    def run(self, seeds: list, fingerprint: str):
        client = connect(self.address)  # first: an unreachable scheduler is the first thing to hear about
        try:
            self.run_on(client, seeds, fingerprint)
        finally:
            client.close()

    def run_on(self, client, seeds: list, fingerprint: str):
        from distributed import Event, wait
        from tqdm.auto import tqdm

        from .study_runs import dvc, git, write_seed_folder

        commit = git("rev-parse", "HEAD").strip()
        remote = check_pushed(commit)
        mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI")
        if (self.runner.params.get("tracking") or {}).get("enabled", True) and not mlflow_uri:
            raise PipelineError("a cluster study logs to a shared MLflow server: set MLFLOW_TRACKING_URI to it (or "
                                "tracking.enabled: false); a worker's own store would be lost with its scratch folder")
        if not dvc("remote", "default", check=False).stdout.strip():
            raise PipelineError("a cluster study needs a default DVC remote that every worker reaches (dvc remote "
                                "add -d <name> <url>, committed): workers pull the run cache and push outputs there")
        workers = client.scheduler_info()["workers"].values()
        if not any(worker.get("resources", {}).get("seed", 0) >= 1 for worker in workers):
            raise PipelineError(f"Dask scheduler at {self.address}: no worker offers the resource seed=1; start "
                                "workers with `dask worker <address> --resources seed=1`")
        if dashboard(client):
            print(f"Dask dashboard: {dashboard(client)}", flush=True)
        stop_name = f"fashion-study-stop-{commit[:12]}-{os.getpid()}"
        stop = Event(stop_name, client=client)
        futures = {client.submit(run_seed_task, seed, commit, remote, mlflow_uri, stop_name,
                                 key=f"study-seed-{seed}-{commit[:12]}", resources=RESOURCE, retries=RETRIES,
                                 pure=False): seed for seed in seeds}
        print(f"sent seeds {', '.join(map(str, seeds))} to the Dask scheduler at {self.address}", flush=True)
        pending, where = set(futures), {}
        bar = tqdm(total=len(seeds), desc="seeds", unit="seed")
        try:
            while pending:
                try:
                    done, pending = wait(pending, timeout=5, return_when="FIRST_COMPLETED")
                except TimeoutError:  # none finished in 5 s: say where they run
                    done = set()
                self.report_placement(client, futures, where)
                for future in done:
                    self.record(futures[future], future, fingerprint, write_seed_folder)
                    bar.update(1)
        except KeyboardInterrupt:
            stop.set()  # every running task stops its pipeline
            client.cancel(list(pending), force=True)
            raise
        finally:
            bar.close()

    def report_placement(self, client, futures, where):
        keys = {future.key: seed for future, seed in futures.items()}
        for worker, running in client.processing().items():
            for key in running:
                if key in keys and where.get(keys[key]) != worker:
                    where[keys[key]] = worker
                    print(f"seed {keys[key]}: running on {worker}", flush=True)

    def record(self, seed, future, fingerprint, write_seed_folder):
        try:
            result = future.result()
        except Exception as error:  # the task raised (retries spent) or its worker kept dying
            self.runner.record_failure(seed, f"error: seed {seed} on the cluster: {first_line(error, 240)}")
            return
        if not result["ok"]:
            self.runner.record_failure(seed, result["log"] + f"\n{result['error']}\n")
        elif result["fingerprint"] != fingerprint:
            self.runner.record_failure(seed, f"error: seed {seed} ran code {result['fingerprint']} on "
                                             f"{result['worker']}, not this study's {fingerprint}")
        else:
            write_seed_folder(seed, result["files"])
            self.runner.report_success(seed, f"on {result['worker']}")
