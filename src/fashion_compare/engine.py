"""The study's and the tuning's engine: every seed or trial is one Dask task, on this machine or on a cluster.

Without an address (DASK_SCHEDULER_ADDRESS, `--cluster`, `make study CLUSTER=...`) the driver starts a
LocalCluster here: `jobs` worker processes offering the resource `seed=1`, each task with cores / jobs threads;
the workers die with the driver (the kernel's parent-death signal) and leave Ctrl-C to it. With an address, the
driver first checks that a Dask scheduler answers there, then submits the same tasks to it. run_tasks hands each
result to the driver as it comes back and stops every task on an interruption; a lost scheduler, or no worker
able to run the tasks, ends the run in one line. What a seed's task does is seed_task.py's.
"""

import contextlib
import os
import signal
import time
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

from .errors import PipelineError, first_line, interruption
from .process import available_cores, set_parent_death_signal

RESOURCE = {"seed": 1}  # cluster workers: `dask worker <address> --resources seed=1`
RETRIES = 2  # errors raised by the task itself (a git or DVC remote that hiccups); a dead worker is Dask's
CONNECT_TIMEOUT = "10s"
NO_WORKER_SECONDS = 20  # a cluster with no worker able to run seeds for this long: the study stops
# The driver's Dask client logs a lost scheduler with tracebacks at ERROR; the driver says it in one line instead.
CLIENT_LOGGERS = ("distributed.client", "distributed.core", "distributed.comm", "distributed.batched",
                  "distributed.utils")


def scheduler_address(cli_address=None) -> str | None:
    """The cluster to use: `--cluster`, else Dask's own configuration (DASK_SCHEDULER_ADDRESS); None: a local
    cluster. A malformed address is one line naming where it came from."""
    from distributed.comm import parse_address, parse_host_port

    where = f"--cluster {cli_address}" if cli_address else "DASK_SCHEDULER_ADDRESS"
    address = cli_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        return None
    try:
        scheme, location = parse_address(address)
        parse_host_port(location)
    except ValueError as error:
        raise PipelineError(f"{where}: '{address}' is not a Dask scheduler address ({first_line(error, 80)}); "
                            "give it as tcp://host:8786") from None
    if scheme not in ("tcp", "tls", "ucx", "ws", "wss", "inproc"):
        raise PipelineError(f"{where}: '{address}' has scheme {scheme}://, not a Dask scheduler's (the dashboard "
                            "is http://...:8787; the scheduler is tcp://host:8786)")
    return address


class StopWithDriver(WorkerPlugin):
    """Dask worker plugin for the local cluster: the worker process dies with the driver that started it, and
    ends without a word on Ctrl-C. A Ctrl-C in the terminal reaches the whole foreground process group: the
    driver says what was kept, each seed's `dvc` stops its stage (the resume state is written atomically), and a
    worker's own KeyboardInterrupt would only add a traceback per worker."""

    def setup(self, worker):
        set_parent_death_signal(signal.SIGKILL)
        signal.signal(signal.SIGINT, _end_quietly)  # plugins are set up on the worker's main thread


def _end_quietly(signum, frame):
    os._exit(128 + signum)


def cannot_connect(address: str, error) -> PipelineError:
    return PipelineError(f"Dask scheduler at {address}: cannot connect ({first_line(error, 160)}); start it (dask "
                         "scheduler), or unset DASK_SCHEDULER_ADDRESS / CLUSTER to run locally")


def check_scheduler(address: str):
    """Before a Client: the peer at `address` answers Dask's handshake and says it is a scheduler, within the
    connect timeout. (Dask's Client waits without limit for a peer that accepts the connection and never answers
    in Dask's protocol, an HTTP server for one.)"""
    import asyncio

    from dask.utils import parse_timedelta
    from distributed.comm import connect

    seconds = parse_timedelta(CONNECT_TIMEOUT)

    async def identity():
        comm = await connect(address, timeout=seconds)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(identity(), seconds + 5))
    except TimeoutError:
        raise PipelineError(f"Dask scheduler at {address}: something listens there but gave no Dask answer within "
                            f"{seconds + 5:.0f} s (an HTTP server? a dashboard is http://host:8787, a scheduler "
                            "tcp://host:8786); give the scheduler's address, or unset DASK_SCHEDULER_ADDRESS / CLUSTER "
                            "to run locally") from None
    except (OSError, ValueError) as error:
        raise cannot_connect(address, error) from None
    kind = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
    if kind != "Scheduler":
        raise PipelineError(f"Dask scheduler at {address}: the peer there is a {kind}, not a scheduler; give the "
                            "scheduler's address (dask scheduler prints it)")


def set_log_levels(names, level) -> list:
    """Set these loggers' level; returns [(logger, its level before)], for restore_log_levels."""
    import logging

    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in names]
    for logger, _ in saved:
        logger.setLevel(level)
    return saved


def restore_log_levels(saved: list):
    for logger, level in saved:
        logger.setLevel(level)


@contextlib.contextmanager
def quiet_client_logs():
    import logging

    saved = set_log_levels(CLIENT_LOGGERS, logging.CRITICAL)
    try:
        yield
    finally:
        restore_log_levels(saved)


class QuietTeardown:
    """Dask's messages while a LocalCluster is torn down after an interruption (say, the scheduler's CRITICAL
    "Closed comm ... while trying to write cancelled-keys" when the client went first) tell the user nothing:
    errors.exit_on_error's one line says what happened. `on_interruption()`, innermost in the cluster's `with`,
    silences every `distributed` logger when an exception passes; `restore()`, after the cluster closed, sets
    their levels back."""

    def __init__(self):
        self.saved = []

    @contextlib.contextmanager
    def on_interruption(self):
        import logging

        try:
            yield
        except BaseException:
            self.saved = set_log_levels(["distributed", *(name for name in logging.root.manager.loggerDict
                                                          if name.startswith("distributed."))], logging.CRITICAL + 1)
            raise

    def restore(self):
        restore_log_levels(self.saved)
        self.saved = []


@contextlib.contextmanager
def open_cluster(address: str | None, jobs: int):
    """A Dask client: of a LocalCluster of `jobs` one-task workers when `address` is None (closed at the end),
    else of the scheduler at `address`."""
    from distributed import Client, LocalCluster

    if address is None:
        # No dashboard; the scheduler's HTTP server (health routes) on a free port of this host, not Dask's 8787,
        # which it would take from a user's own cluster (and warn when that one holds it)
        quiet = QuietTeardown()
        try:
            with LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, resources=RESOURCE,
                              dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                              silence_logs=40) as cluster, Client(cluster) as client, quiet.on_interruption():
                client.register_plugin(StopWithDriver(), name="stop-with-driver")
                yield client
        finally:
            quiet.restore()
        return
    check_scheduler(address)
    with quiet_client_logs():
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as error:  # the scheduler went between the check and the Client
            raise cannot_connect(address, error) from None
        with client:
            yield client


def local_task_settings(jobs: int) -> dict:
    """A local task's origin, workspace, MLflow store (the workspace's, whatever DVC_ROOT a stage sees) and
    threads: the cores shared among the workers, or fewer where OMP_NUM_THREADS asks for fewer."""
    from .mlflow_store import tracking_uri

    workspace, threads = str(Path.cwd().resolve()), max(1, available_cores() // jobs)
    with contextlib.suppress(ValueError):
        threads = min(threads, max(1, int(os.environ.get("OMP_NUM_THREADS", ""))))
    return {"origin": workspace, "workspace": workspace, "mlflow_uri": tracking_uri(), "threads": threads}


def seed_workers(client) -> list:
    return [address for address, worker in client.scheduler_info(n_workers=-1)["workers"].items()
            if worker.get("resources", {}).get("seed", 0) >= 1]


def run_tasks(client, function, tasks: list, on_done, key, priority=None):
    """Submit `function(task)` for each of `tasks` (each has a `stop_event` name; `key(task)` names it), call
    `on_done(task, outcome or exception)` as each ends, and forget each result at once (a worker lost later
    does not run a finished task again); what on_done returns (new tasks, or None) is submitted in turn, with
    Dask's `priority(task)` (higher first) where given. Ctrl-C or SIGTERM (or what an on_done it broke off
    raised as it unwound): every running task stops its pipeline, the rest are cancelled, the interruption is
    raised. The scheduler gone, or no worker able to run a task for NO_WORKER_SECONDS: one line."""
    from distributed import Event, wait

    stop_events = {task.stop_event for task in tasks}

    def submit(batch):
        stop_events.update(task.stop_event for task in batch)
        return {client.submit(function, task, key=f"{key(task)}-{task.stop_event}", resources=RESOURCE,
                              retries=RETRIES, pure=False, priority=priority(task) if priority else 0): task
                for task in batch}

    futures = submit(tasks)
    pending, lonely_since = set(futures), None
    try:
        while pending:
            try:
                done, pending = wait(pending, timeout=5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            lonely_since = None if seed_workers(client) else (lonely_since or time.monotonic())
            if lonely_since and time.monotonic() - lonely_since > NO_WORKER_SECONDS:
                raise PipelineError(f"the Dask cluster has had no worker with the resource seed=1 for "
                                    f"{NO_WORKER_SECONDS} s ({len(pending)} task(s) waiting); start workers "
                                    "(dask worker <address> --resources seed=1) and run again: finished work is kept")
            for future in done:
                task = futures.pop(future)
                try:
                    outcome = future.result()
                except Exception as error:  # noqa: BLE001 - the task raised (retries spent) or its worker kept dying
                    outcome = error
                future.release()
                more = submit(on_done(task, outcome) or [])
                futures.update(more)
                pending |= set(more)
    except (KeyboardInterrupt, Exception) as error:
        if (interrupt := interruption(error)) is not None:  # or what an on_done broke off raised as it unwound
            for name in stop_events:  # every running task stops its pipeline
                Event(name, client=client).set()
            client.cancel(list(pending), force=True)
            raise interrupt from None
        if type(error).__name__ in ("FuturesCancelledError", "CancelledError", "CommClosedError"):
            raise PipelineError(f"the Dask scheduler went away mid-study ({type(error).__name__}); finished work "
                                "is kept: restart it and run again") from None
        raise
