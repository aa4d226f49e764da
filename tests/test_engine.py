"""The local Dask cluster the study's and the tuning's engine starts (engine.open_cluster), for real: seconds;
an interruption while the driver collects a task; how a collected seed's scratch clone goes."""

import contextlib
import socket
import time
import warnings
from dataclasses import replace

import pytest

from fashion_compare import engine, seed_task
from fashion_compare.errors import Interrupted
from fashion_compare.seed_folders import Recipe


def test_the_local_cluster_leaves_dasks_dashboard_port_alone():
    """A study's or a tuning's LocalCluster shows no dashboard and keeps its scheduler's HTTP server off 8787 (a
    user's own Dask cluster's port, where it used to warn "Port 8787 is already in use"), on this host only."""
    with socket.socket() as holder, warnings.catch_warnings():
        warnings.simplefilter("error")  # Dask's port warning would fail the test
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            holder.bind(("127.0.0.1", 8787))  # a dashboard of somebody else's, where the port is free
            holder.listen()
        with engine.open_cluster(None, 1) as client:
            server = client.cluster.scheduler.http_server  # its bound address, as Dask records it
            bound = (server.address, server.port)
            assert client.dashboard_link is None or "8787" not in client.dashboard_link
    assert bound[0] == "127.0.0.1" and bound[1] != 8787, bound



def test_an_interruption_that_breaks_off_on_done_stops_the_tasks_and_is_raised_as_itself():
    """A SIGTERM inside on_done (the driver collecting a seed) whose cleanup then fails in its own way: the tasks
    are told to stop, and the interruption, not the cleanup's error, is what the driver's caller sees."""
    from distributed import Event

    task = seed_task.SeedTask(1, Recipe(), "0" * 40, ".", None, None, 1, "fashion-test-stop")

    def on_done(task, outcome):
        try:
            raise Interrupted("SIGTERM")
        finally:
            raise OSError(9, "Bad file descriptor")

    with engine.open_cluster(None, 1) as client:
        with pytest.raises(Interrupted):  # time.sleep(task) fails at once on the worker: an outcome to collect
            engine.run_tasks(client, time.sleep, [task, replace(task, seed=2)], on_done, lambda task: task.seed)
        assert Event("fashion-test-stop", client=client).is_set()

def scratch_clone(workspace, seed):
    task = seed_task.SeedTask(seed, Recipe(), "0" * 40, str(workspace), str(workspace), None, 1, "stop")
    scratch = seed_task.scratch_path(workspace / seed_task.SCRATCH_DIR, task)
    (scratch / ".git").mkdir(parents=True)
    (scratch / ".resume").mkdir()
    (scratch / ".resume" / "resnet.pt").write_bytes(b"state")
    scratch.with_name(scratch.name + ".log").write_text("log")
    return task, scratch


def test_a_collection_broken_off_leaves_no_half_clone_to_resume_in_and_the_next_one_clears_it(tmp_path,
                                                                                                monkeypatch):
    """A SIGTERM mid-deletion (CI's driver got one inside shutil.rmtree) leaves the clone under another name,
    never half of it where a rerun of the seed would resume; the next collection deletes what was left."""
    first, first_scratch = scratch_clone(tmp_path, 1)
    second, second_scratch = scratch_clone(tmp_path, 2)

    def broken_off(path, **kwargs):
        raise Interrupted("SIGTERM")

    with monkeypatch.context() as patched:
        patched.setattr(seed_task.shutil, "rmtree", broken_off)
        with pytest.raises(Interrupted):
            seed_task.forget_scratch(first)
    assert not first_scratch.exists() and not first_scratch.with_name(first_scratch.name + ".log").exists()
    assert (first_scratch.with_name(first_scratch.name + seed_task.DELETING) / ".resume" / "resnet.pt").is_file()

    seed_task.forget_scratch(second)
    assert list((tmp_path / seed_task.SCRATCH_DIR).iterdir()) == [], "a clone, a log or a leftover is still there"


def test_dasks_teardown_after_an_interruption_is_silenced_and_the_levels_come_back():
    """What the LocalCluster logs while it closes after Ctrl-C (a scheduler's CRITICAL about a closed comm, seen
    under load) must not reach the terminal, whose one line says what happened; a block that ends normally
    silences nothing, and the levels come back once the cluster is closed."""
    import logging

    scheduler = logging.getLogger("distributed.scheduler")
    before = scheduler.level
    quiet = engine.QuietTeardown()
    with quiet.on_interruption():
        pass
    assert scheduler.isEnabledFor(logging.CRITICAL)
    with pytest.raises(Interrupted):
        try:
            with quiet.on_interruption():
                raise Interrupted("SIGINT")
        finally:  # where LocalCluster's and Client's exits run
            assert not scheduler.isEnabledFor(logging.CRITICAL)
            assert not logging.getLogger("distributed").isEnabledFor(logging.CRITICAL)
    quiet.restore()
    assert scheduler.level == before and scheduler.isEnabledFor(logging.CRITICAL)
