"""Errors a user can act on, and the wrapper that turns them into one line."""

import functools
import os
import sys


def first_line(error, limit=300) -> str:
    """The first line of an error's message (its type when empty). A longer line is cut after its last
    whole sentence that fits (or, with none, at a word boundary, marked with " …")."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    if len(line) <= limit:
        return line
    head = line[:limit]
    end = head.rfind(". ")
    return head[:end + 1] if end > 0 else head.rsplit(" ", 1)[0] + " …"


class PipelineError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class ParamsError(PipelineError):
    pass


class DataError(PipelineError):
    pass


class TrackingError(PipelineError):
    pass


class TrainingDiverged(PipelineError):
    """A non-finite loss: the run stops at once."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the stage stops, keeping what it can resume from."""

    def __init__(self, signal_name="SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


def interruption(error):
    """The Ctrl-C or SIGTERM behind `error`: the error itself, or one it was raised while handling. Code a
    signal breaks off can fail in its own way as it unwinds (shutil.rmtree, interrupted, closes a directory
    twice: EBADF); that failure is the interruption's. None when no interruption is in the chain."""
    while error is not None and not isinstance(error, KeyboardInterrupt):
        error = error.__context__
    return error


def exit_on_error(main):
    """Run a stage's main(); a PipelineError becomes `error: <message>` and exit status 1; an interruption
    (or an error raised while one unwinds) `error: interrupted (...)` and 130 (SIGINT) or 143 (SIGTERM)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (KeyboardInterrupt, Exception) as error:
            if (interrupt := interruption(error)) is not None:
                name = getattr(interrupt, "signal_name", "SIGINT")
                print(f"error: interrupted ({name}); run the stage again to go on", file=sys.stderr)
                sys.exit(143 if name == "SIGTERM" else 130)
            if not isinstance(error, PipelineError):
                raise
            hint = ""
            if isinstance(error, ParamsError) and "DVC_STAGE" in os.environ:
                hint = ("; DVC removed this stage's outputs before running it: fix params.yaml, or bring the "
                        "committed ones back with `git checkout -- metrics plots && dvc checkout`")
            print(f"error: {error}{hint}", file=sys.stderr)
            sys.exit(1)

    return wrapper
