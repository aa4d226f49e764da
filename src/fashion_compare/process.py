"""How a stage process lives and ends: SIGTERM and SIGINT become an orderly stop, a stage never outlives
the `dvc` that started it, one workspace trains one model once at a time, and glibc keeps freed memory."""

import contextlib
import ctypes
import fcntl
import os
import platform
import signal
import sys
import threading
from pathlib import Path

from .errors import Interrupted, PipelineError

PR_SET_PDEATHSIG = 1  # prctl(2)
SHELLS = {"sh", "dash", "bash", "zsh", "fish", "ksh"}
PARENT_POLL_SECONDS = 1.0


_deferred = {"depth": 0, "pending": None}  # signals_deferred's state


def raise_on_sigterm():
    """Turn SIGTERM (a CI cancel, a shutdown, the parent's death) into Interrupted, so cleanup runs as for
    Ctrl-C; and make SIGINT interrupt too where the process started with it ignored (`cmd &` in a script).
    Inside `signals_deferred()` the interrupt waits for the end of the block."""

    def handler(signum, frame):
        name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
        if _deferred["depth"]:
            _deferred["pending"] = name
            return
        raise Interrupted(name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM until the block ends: a write to the tracking store cut in half by an exception
    leaves its session unusable, and then the run could not be marked KILLED."""
    _deferred["depth"] += 1
    try:
        yield
    finally:
        _deferred["depth"] -= 1
    if _deferred["depth"] == 0 and _deferred["pending"]:
        name, _deferred["pending"] = _deferred["pending"], None
        raise Interrupted(name)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def alive(pid: int) -> bool:
    """Whether a process with this PID exists and has not exited (one of another user's counts). A zombie is
    dead: in a container whose PID 1 does not reap orphans, a killed `dvc` stays one for good."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _state_of(pid) not in ("Z", "X")


def _state_of(pid: int) -> str:
    """The process's state letter in /proc/<pid>/stat (R, S, Z, ...); "" where there is no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def set_parent_death_signal(signum=signal.SIGTERM):
    """Have Linux send `signum` to this process when the thread that started it exits (prctl
    PR_SET_PDEATHSIG); nothing elsewhere. Safe in a subprocess's preexec_fn (one system call)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


_parents = {"started_by": None, "shell_parent": None}  # stop_with_parent's


def parent_gone() -> bool:
    """Whether the `dvc` that started this stage is gone; False outside DVC. Where a shell stands between them,
    dvc is gone once the shell was handed to another parent: that happens when dvc exits, whether or not
    anything reaps it (a zombie counts as alive to os.kill)."""
    started_by, shell_parent = _parents["started_by"], _parents["shell_parent"]
    if started_by is None:
        return False
    if os.getppid() != started_by or not alive(started_by):
        return True
    return shell_parent is not None and (_parent_of(started_by) != shell_parent or not alive(shell_parent))


class ParentCheck:
    """A training observer: after each epoch (its state saved), stop as on SIGTERM if the `dvc` that started
    the stage is gone. The watcher thread checks only every second; a training frozen and continued after
    its `dvc` died would otherwise train on to its end and be run again all the same."""

    def on_epoch(self, record, steps):
        if parent_gone():
            raise Interrupted("SIGTERM")


def stop_with_parent():
    """When the process that started this stage dies (`kill <pid of dvc>`, a CI runner's cancel), stop as
    on our own SIGTERM. Only under DVC (it sets DVC_STAGE): a stage run by hand with nohup may outlive its
    shell on purpose.

    Linux's prctl(PR_SET_PDEATHSIG) delivers SIGTERM the moment the parent exits; a watcher thread also
    checks every second, for a shell that DVC's command line may have left between dvc and us (then dvc
    is watched too) and for systems without prctl; ParentCheck checks after every epoch."""
    if "DVC_STAGE" not in os.environ:
        return
    parent = os.getppid()
    shell_parent = _parent_of(parent) if _command_name(parent) in SHELLS and _parent_of(parent) > 1 else None
    _parents.update(started_by=parent, shell_parent=shell_parent)
    set_parent_death_signal(signal.SIGTERM)

    def watch():
        stop = threading.Event()
        while not stop.wait(PARENT_POLL_SECONDS):
            if parent_gone():
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def exclusive(lock_path, what: str):
    """Hold an exclusive lock on `lock_path` (the file names the holder's PID) for the block; refuse in one
    line while another live process holds it. The kernel drops the lock when its holder dies, however."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise PipelineError(f"{lock_path}: {what} is already running in this workspace (PID {holder}); "
                                "wait for it to finish or stop it, then run again") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


# glibc's mallopt(3) parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse rather than give it back to the kernel.

    Every training step frees and allocates again the same large buffers (the CNN's activations at
    batch 100 are 10 MB each). By default glibc serves such blocks with mmap and unmaps them on free,
    or trims the heap, so each step pays again for fresh zeroed pages: 6,000-7,000 page faults a step
    for the CNN, a fifth of its step time. Blocks below 32 MiB now come from the heap and stay there.
    This is what PyTorch's CPU performance guide gets from jemalloc or tcmalloc, without a preloaded
    library. True if applied; False where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(M_TRIM_THRESHOLD, 2**30))
