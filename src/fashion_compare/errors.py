"""Errors a user can act on, and the wrapper that turns them into one line."""

import functools
import sys


class PipelineError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class ParamsError(PipelineError):
    pass


class DataError(PipelineError):
    pass


class TrackingError(PipelineError):
    pass


def exit_on_error(main):
    """Run a stage's main(); a PipelineError becomes `error: <message>` and exit status 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PipelineError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    return wrapper
