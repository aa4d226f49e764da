"""How a stage process lives: the single-instance lock, one-line errors that end at a sentence, and the exit
status of an interruption, whatever it broke off."""

import subprocess
import sys
from pathlib import Path

import pytest

from fashion_compare import process
from fashion_compare.errors import Interrupted, PipelineError, exit_on_error, first_line

HOLD_LOCK = """
import sys, time
sys.path.insert(0, sys.argv[1])
from fashion_compare import process
with process.exclusive(sys.argv[2], "a training of cnn"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_holder_of_the_lock_is_refused_naming_the_first(tmp_path):
    from pathlib import Path

    lock = tmp_path / ".resume" / "cnn.lock"
    src = str(Path(process.__file__).resolve().parents[1])
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, src, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PipelineError) as error:
            with process.exclusive(lock, "a training of cnn"):
                pass
        assert str(error.value) == (f"{lock}: a training of cnn is already running in this workspace "
                                    f"(PID {holder.pid}); wait for it to finish or stop it, then run again")
    finally:
        holder.kill()
        holder.wait()
    with process.exclusive(lock, "a training of cnn"):  # its holder is gone: the kernel dropped the lock
        pass


def test_long_messages_are_cut_after_a_whole_sentence():
    long = "Weights only load failed. " + "This file can still be loaded with more words " * 10
    assert first_line(ValueError(long), 100) == "Weights only load failed."
    assert first_line(ValueError("x" * 20 + " " + "y" * 200), 100) == "x" * 20 + " …"
    assert first_line(ValueError("short\nsecond line")) == "short"
    assert first_line(ValueError()) == "ValueError"


def test_an_error_raised_while_a_sigterm_unwinds_is_reported_as_the_sigterm(capsys):
    """A SIGTERM that lands inside cleanup code (CI saw shutil.rmtree, broken off, close a directory twice) ends
    in the interruption's line and status 143, not the cleanup's traceback; an error of its own still raises."""

    @exit_on_error
    def broken_off_cleanup():
        try:
            raise Interrupted("SIGTERM")
        finally:
            raise OSError(9, "Bad file descriptor")

    with pytest.raises(SystemExit) as exit_:
        broken_off_cleanup()
    assert exit_.value.code == 143
    assert capsys.readouterr().err == "error: interrupted (SIGTERM); run the stage again to go on\n"

    @exit_on_error
    def failing():
        raise OSError(9, "Bad file descriptor")

    with pytest.raises(OSError):
        failing()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_zombie_is_not_alive_but_a_running_process_and_this_one_are():
    """A killed `dvc` reparented to a PID 1 that does not reap (some containers) stays a zombie: the stage it
    started must still see it as gone (process.parent_gone), and a RUNNING MLflow run of it as stale."""
    import os
    import time

    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.time() + 30
        while not open(f"/proc/{exited.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            assert time.time() < deadline, "the child never exited"
            time.sleep(0.05)
        assert not process.alive(exited.pid)  # a zombie: exited, not yet reaped (os.kill(pid, 0) succeeds)
        assert process.alive(running.pid) and process.alive(os.getpid())
    finally:
        running.kill()
        running.wait()
        exited.wait()
    assert not process.alive(exited.pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stage_behind_a_shell_stops_when_its_dvc_dies_even_unreaped(tmp_path):
    """DVC runs `sh -c <cmd>`; the stage's parent is the shell, which outlives a killed dvc. Here the "dvc" is a
    process this test starts and never reaps after killing it (a zombie, as under a PID 1 that does not reap):
    the stage still sees it gone within a few seconds and stops as on SIGTERM."""
    import os
    import time

    stage = tmp_path / "stage.py"
    stage.write_text(f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "src")!r})
from fashion_compare import process
from fashion_compare.errors import Interrupted
process.raise_on_sigterm()
process.stop_with_parent()
open("started", "w").close()
try:
    time.sleep(60)
except Interrupted as stop:
    open("stopped", "w").write(str(stop))
""")
    dvc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                            f"subprocess.run(['sh', '-c', '{sys.executable} {stage}; exit $?'])"],
                           cwd=tmp_path, env={**os.environ, "DVC_STAGE": "train"})
    try:
        deadline = time.time() + 30
        while not (tmp_path / "started").exists():
            assert time.time() < deadline and dvc.poll() is None, "the stage never started"
            time.sleep(0.05)
        dvc.kill()  # not waited for: a zombie until the end of the test
        deadline = time.time() + 10
        while not (tmp_path / "stopped").exists():
            assert time.time() < deadline, "the stage trained on after its dvc died"
            time.sleep(0.1)
        assert (tmp_path / "stopped").read_text() == "SIGTERM"
    finally:
        dvc.kill()
        dvc.wait()
