"""Benchmark: peak memory of each stage script, and the time of a no-op `dvc repro`.

    python benchmarks/stage_costs.py [--subset 2000]

Peak RSS per stage (goal <= 3 GiB), each run in a scratch copy: prepare on the full data, then the other
stages on a stratified `subset`, 1 epoch. The no-op repro (goal <= 3 s) is measured in the repository
itself, only when `dvc status` says it is up to date (otherwise a repro would run stages).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import REPO, exit_on_error, record, say, tool

# A forked child keeps its parent's RSS high-water mark through exec, so the child is started from this
# small wrapper process rather than from the benchmark process, and the wrapper reports its peak.
RSS_WRAPPER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_gib(command, cwd, env):
    """Run a command; return its peak resident set size in GiB (None if it failed)."""
    out = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *command], cwd=cwd, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return round(int(out[1]) / 2**20, 3) if int(out[0]) == 0 else None  # ru_maxrss is in KiB on Linux


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=2000)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fashion-bench-"))
    try:
        for item in ("stages", "params.yaml"):
            (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, scratch / item)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}", "DVC_ROOT": str(scratch)}
        steps = [("prepare (full data)", ["stages/prepare.py"]), ("smoke params", None),
                 (f"prepare (subset {args.subset})", ["stages/prepare.py"]),
                 (f"train@resnet (subset {args.subset})", ["stages/train.py", "resnet"]),
                 (f"train_baseline, cnn (subset {args.subset})", ["stages/train.py", "cnn"]),
                 (f"evaluate (subset {args.subset})", ["stages/evaluate.py"]),
                 (f"compare (subset {args.subset})", ["stages/compare.py"])]
        for label, command in steps:
            if command is None:
                smoke = yaml.safe_load((scratch / "params.yaml").read_text())
                smoke["data"]["subset"], smoke["epochs"] = args.subset, 1
                smoke["models"]["resnet"]["recipe"]["epochs"] = 1
                (scratch / "params.yaml").write_text(yaml.safe_dump(smoke))
                continue
            gib = peak_rss_gib([sys.executable, *command], scratch, env)
            record("peak_rss_gib", label, gib)
            say(f"peak RSS {label}: {gib} GiB")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    status = subprocess.run([tool("dvc"), "status", "--json"], cwd=REPO, capture_output=True, text=True, env=env)
    if status.returncode != 0 or status.stdout.strip() != "{}":
        say("no-op dvc repro: not measured (the pipeline is not up to date)")
        return
    started = time.perf_counter()
    subprocess.run([tool("dvc"), "repro"], cwd=REPO, capture_output=True, check=True, env=env)
    seconds = time.perf_counter() - started
    record("dvc", "noop_repro_seconds", seconds)
    say(f"no-op dvc repro: {seconds:.2f} s")


if __name__ == "__main__":
    main()
