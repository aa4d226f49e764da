"""What the benchmark scripts share: the repository's package and tools, fresh processes, the report file.

Every script adds its figures to metrics/benchmark.json as soon as it has measured them (one key per
script), so a run cut short keeps what it measured; and prints each figure when it is measured.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent  # dvc, mlflow: the virtualenv's own, whatever PATH says
REPORT = REPO / "metrics" / "benchmark.json"
sys.path.insert(0, str(REPO / "src"))  # this checkout's package, as the stages use it

from fashion_compare.errors import PipelineError, exit_on_error  # noqa: E402, F401  (each script's main: one line)
from fashion_compare.tools import cpu_kind  # noqa: E402  (what a seed's run.json records too)


def cpu_model() -> str:
    return cpu_kind()["name"]


def failed(what: str, result) -> PipelineError:
    """One line for a command that failed: what it was, and the last line it printed (its `error:` line)."""
    lines = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
    return PipelineError(f"{what} failed: {lines[-1]}")


def tool(name: str) -> str:
    """The virtualenv's command `name` (dvc, mlflow), found beside this Python."""
    path = VENV_BIN / name
    if not path.exists():
        raise PipelineError(f"{path}: not found; run `make setup` (or the script with the virtualenv's python)")
    return str(path)


def machine() -> dict:
    import torch

    return {"cpu": cpu_model(), "cpu_kind": cpu_kind(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "avx512": "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None,
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}


def record(part: str, key: str, value, path: Path = REPORT):
    """Add one figure to the report now (atomically), under report[part][key]."""
    from fashion_compare.files import write_json

    report = json.loads(path.read_text()) if path.exists() else {}
    if report.get("machine", {}).get("cpu") not in (None, cpu_model()):  # another machine's figures: start over
        say(f"{path}: held figures of another machine ({report['machine']['cpu']}); starting a new report")
        report = {}
    report.setdefault("machine", machine())
    report.setdefault(part, {})[key] = value
    write_json(path, report)


def say(text: str):
    print(text, flush=True)


def in_fresh_process(script: Path, *args) -> dict:
    """Run `script *args` in a fresh Python process (no settings inherited from this one); it prints one
    JSON object as its last line."""
    result = subprocess.run([sys.executable, str(script), *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise failed(f"{script.name} {' '.join(args)}", result)
    return json.loads(result.stdout.strip().splitlines()[-1])
