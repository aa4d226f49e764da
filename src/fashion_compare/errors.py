"""Errors a user can act on, and the wrapper that turns them into one line."""

import functools
import sys


def first_line(error, limit=300) -> str:
    """The first line of an error's message (its type when empty), cut at a word boundary if long."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " …"


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


def raise_on_sigterm():
    """Turn SIGTERM (a CI cancel, a shutdown) into Interrupted, so cleanup runs as for Ctrl-C; and make
    SIGINT interrupt too where the process started with it ignored (started by `cmd &` in a script)."""
    import signal

    def handler(signum, frame):
        raise Interrupted("SIGTERM" if signum == signal.SIGTERM else "SIGINT")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def exit_on_error(main):
    """Run a stage's main(); a PipelineError becomes `error: <message>` and exit status 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PipelineError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt as interrupt:
            name = getattr(interrupt, "signal_name", "SIGINT")
            print(f"error: interrupted ({name}); run the stage again to go on", file=sys.stderr)
            sys.exit(143 if name == "SIGTERM" else 130)

    return wrapper
