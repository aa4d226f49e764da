"""The wall time of a long command that goes on where it stopped (`make tune`, `make study`): one entry per run of
it that had work to do, committed beside its results (sessions.json); the command's wall time is their sum."""

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import PipelineError, first_line
from .files import write_json


@dataclass(frozen=True)
class Session:
    """One run that had work to do: when it started, its wall seconds until its last write (a killed one: until
    the last result it recorded), where it ran."""

    started: str  # UTC, ISO 8601
    wall_seconds: float
    jobs: int | None  # tasks at a time on this machine; None: on a cluster
    cpu: str  # the driver's machine


def load_sessions(path: Path, command: str) -> list[Session]:
    """The committed sessions, validated: one line naming the file when it is not what `command` wrote."""
    from pydantic import TypeAdapter, ValidationError

    if not path.is_file():
        return []
    try:
        return TypeAdapter(list[Session]).validate_json(path.read_bytes())
    except (OSError, ValidationError) as error:
        raise PipelineError(f"{path}: not {command}'s list of sessions ({first_line(error, 100)}); restore it "
                            f"(git checkout -- {path})") from None


class SessionClock:
    """This run's entry in `path`: none until begin() (a run with nothing to do adds none); each write() rewrites
    the file with the earlier sessions and this one's wall time so far."""

    def __init__(self, path: Path, command: str):
        self.path, self.earlier, self.begun = Path(path), load_sessions(Path(path), command), None

    def begin(self, jobs: int | None, cpu: str):
        self.begun = (datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter(), jobs, cpu)

    def write(self):
        if self.begun:
            started, clock, jobs, cpu = self.begun
            now = Session(started, round(time.perf_counter() - clock, 1), jobs, cpu)
            write_json(self.path, [asdict(session) for session in [*self.earlier, now]])
