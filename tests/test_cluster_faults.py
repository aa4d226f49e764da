"""A study's driver facing faults of its Dask cluster, with real processes on 127.0.0.1 (seconds each): Ctrl-C in
the terminal, a peer that is not a scheduler, the scheduler killed, the last worker able to run seeds gone. Each
ends within 30 s in one `error:` line that names the cause and the remedy, without a traceback. The engine's
run_tasks drives stand-in tasks (a child process and the stop event polled, as a seed's task does)."""

import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import VENV_BIN, free_port, tool_env, wait_for_workers

pytestmark = pytest.mark.e2e

DRIVER = '''
import sys, time
from dataclasses import dataclass
from fashion_compare import engine, process
from fashion_compare.errors import exit_on_error

@dataclass(frozen=True)
class Task:
    seed: int
    stop_event: str = "stop-driver"

def seed_like(task):  # a child process, the stop event polled every second: what seed_task._run does
    import subprocess
    from distributed import Event
    child = subprocess.Popen(["sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while child.poll() is None and not Event(task.stop_event).is_set():
        time.sleep(1)
    child.kill()
    return task.seed

def main():
    process.raise_on_sigterm()  # as stages/study.py: SIGINT interrupts even where it was inherited ignored
    address = None if sys.argv[1] == "local" else sys.argv[1]
    with engine.open_cluster(address, 2) as client:
        print("running", flush=True)
        engine.run_tasks(client, seed_like, [Task(1), Task(2)], lambda task, outcome: None,
                         key=lambda task: f"seed-{task.seed}")

if __name__ == "__main__":  # the LocalCluster's workers are spawned: they import this file
    exit_on_error(main)()
'''


def start_driver(tmp_path, address):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), address], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=tool_env(), start_new_session=True)
    assert driver.stdout.readline().strip() == "running", driver.communicate(timeout=60)
    time.sleep(2)  # the tasks are running
    return driver


def ended_in_one_line(driver, within: float) -> str:
    """The driver's stderr, once it has ended within `within` seconds: one line, no traceback."""
    try:
        _, stderr = driver.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        _, stderr = driver.communicate(timeout=30)
        pytest.fail(f"the driver was still waiting {within} s after the fault; it said: {stderr}")
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    return stderr.strip()


@pytest.fixture
def scheduler_and_worker(tmp_path):
    env, port = tool_env(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([str(VENV_BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                               "--resources", "seed=1", "--no-dashboard", "--local-directory", str(tmp_path / "w")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_workers(address, 1, env)
        yield address, scheduler, worker
    finally:
        for process in (scheduler, worker):
            process.kill()
            process.wait()


def test_ctrl_c_in_the_terminal_stops_a_local_study_in_one_line(tmp_path):
    """SIGINT to the whole foreground process group, as the terminal sends it: the LocalCluster's worker
    processes get it too, and end without a KeyboardInterrupt traceback each."""
    driver = start_driver(tmp_path, "local")
    os.killpg(driver.pid, signal.SIGINT)
    assert ended_in_one_line(driver, 30) == "error: interrupted (SIGINT); run the stage again to go on"
    assert driver.returncode == 130


def test_an_address_where_an_http_server_listens_is_refused_in_one_line(tmp_path):
    """Dask's Client waits without limit for a peer that accepts the connection and never answers its protocol."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.server_address[1]}"
    try:
        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        driver = subprocess.Popen([sys.executable, str(script), address], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=tool_env(), start_new_session=True)
        line = ended_in_one_line(driver, 30)
    finally:
        server.shutdown()
    assert line.startswith(f"error: Dask scheduler at {address}: something listens there but gave no Dask answer")
    assert "give the scheduler's address" in line and driver.returncode == 1


def test_a_peer_that_is_not_a_scheduler_is_named_for_what_it_is(scheduler_and_worker):
    from fashion_compare import engine
    from fashion_compare.errors import PipelineError

    address, *_ = scheduler_and_worker
    engine.check_scheduler(address)  # the scheduler passes
    from distributed import Client

    with Client(address, timeout="10s") as client:
        worker = next(iter(client.scheduler_info()["workers"]))
    with pytest.raises(PipelineError, match=r"the peer there is a Worker, not a scheduler"):
        engine.check_scheduler(worker)


def test_the_scheduler_killed_mid_study_ends_the_driver_in_one_line(tmp_path, scheduler_and_worker):
    address, scheduler, _ = scheduler_and_worker
    driver = start_driver(tmp_path, address)
    scheduler.kill()
    line = ended_in_one_line(driver, 30)
    assert line.startswith("error: the Dask scheduler went away mid-study") and "run again" in line
    assert driver.returncode == 1


def test_the_last_worker_able_to_run_seeds_gone_ends_the_driver_in_one_line(tmp_path, scheduler_and_worker):
    address, _, worker = scheduler_and_worker
    driver = start_driver(tmp_path, address)
    os.killpg(worker.pid, signal.SIGKILL)
    line = ended_in_one_line(driver, 30)
    assert line.startswith("error: the Dask cluster has had no worker with the resource seed=1 for")
    assert "start workers (dask worker <address> --resources seed=1) and run again" in line
    assert driver.returncode == 1
