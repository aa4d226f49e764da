"""Atomic output writing: every file appears whole or not at all."""

import contextlib
import contextvars
import csv
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from .errors import PipelineError

_staged = contextvars.ContextVar("staged", default=None)  # the files of a `together` block, while one is open


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is renamed onto `path` (inside a `together`
    block: when the block ends, with the block's other files).

    An OS error (no space left, no permission) becomes one line naming `path`; `path` keeps
    its old content."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        if _staged.get() is not None:
            _staged.get().append((tmp, path))
            tmp = None  # the block renames it, or removes it
        else:
            os.replace(tmp, path)
    except OSError as error:
        raise PipelineError(f"{path}: cannot write ({error.strerror or error}); nothing was changed") from None
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def together():
    """Every file written in the block (through atomic_path: write_json, write_csv, save_figure, ...) is
    written beside its target first and renamed onto it when the block ends: all of them, or, when anything
    in the block fails, none (the temporary files are removed and every target keeps its old content)."""
    staged = []
    token = _staged.set(staged)
    try:
        yield
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    finally:
        _staged.reset(token)
    for tmp, path in staged:  # renames within each target's folder: they fail only when the disk does
        try:
            os.replace(tmp, path)
        except OSError as error:
            raise PipelineError(f"{path}: cannot write ({error.strerror or error})") from None


def check_writable(paths, free_bytes_needed=0):
    """Fail before the work, not after it: every path's folder can be created and written to, and
    the disk holding them has `free_bytes_needed` free."""
    for path in map(Path, paths):
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise PipelineError(f"{folder}: not writable ({error.strerror or error}); "
                                f"{path} could not be written") from None
        if path.exists() and not os.access(path, os.W_OK):
            raise PipelineError(f"{path}: not writable; fix its permissions")
        free = shutil.disk_usage(folder).free
        if free < free_bytes_needed:
            raise PipelineError(f"{folder}: only {free / 2**20:.0f} MiB free on its disk, "
                                f"about {math.ceil(free_bytes_needed / 2**20)} MiB needed; free some space")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, data):
    """Strict JSON: a NaN or infinity is an error here, not a file no JSON parser reads."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_json(path, made_by="the stage that writes it (dvc repro)"):
    """A JSON file another step wrote; missing or unreadable is one line naming it and what to run again
    (`made_by`)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run {made_by} first") from None
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: not readable JSON ({type(error).__name__}); rerun {made_by}") from None


def read_csv_rows(path, made_by="the stage that writes it (dvc repro)") -> list[dict]:
    """A CSV file another step wrote, as a list of dicts; missing or unreadable is one line naming it and
    what to run again (`made_by`)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run {made_by} first") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PipelineError(f"{path}: not readable CSV ({type(error).__name__}); rerun {made_by}") from None


def write_csv(path, rows, fieldnames):
    """Write a list of dicts as CSV (DVC's plot data format)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def save_torch(path, obj):
    """torch.save, byte-stable: the same tensors give the same file, so DVC sees the same hash.

    torch.save names the archive's records after the file it writes to (here a random temporary
    name); saving to memory first gives every file the same record names ("archive/...")."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def save_figure(path, figure):
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
