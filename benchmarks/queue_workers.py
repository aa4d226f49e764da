"""Benchmark: a 4-point grid of queued experiments with one DVC queue worker against two, on this machine.

    python benchmarks/queue_workers.py [--subset 6000] [--workers 1 2]

In a temporary git copy of the repository (a stratified `subset`, 1 epoch), queue the grid
lr = 0.0005, 0.001, 0.002, 0.004 and time `dvc queue start -j N` until every experiment has finished,
for each N. With N workers each stage gets OMP_NUM_THREADS = cores / N (the `threads: auto` rule): two
workers with all cores each would oversubscribe the CPU. The run cache is cleared before each
measurement, so every point really trains. Prints seconds per N and the ratio to N = 1; records them in
metrics/benchmark.json.
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
from common import PipelineError, exit_on_error, failed, record

REPO = Path(__file__).resolve().parent.parent
GRID = ("0.0005", "0.001", "0.002", "0.004")


def sh(command, cwd, env=None):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise failed(" ".join(command), result)
    return result.stdout


def scratch_copy(target: Path, subset: int, rev: str | None = None) -> Path:
    """A git copy of this checkout's working tree (or of commit `rev`) with `subset` images, 1 epoch, built."""
    if rev:
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    files = "" if rev else sh(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], REPO)
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["data"]["subset"], params["epochs"] = subset, 1
    params["evaluate"]["latency_repeats"] = 10
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stale in ("dvc.lock", "metrics", "plots"):
        path = target / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    sh(["git", "init", "-q"], target)
    sh(["git", "add", "-A"], target)
    sh([*git, "commit", "-qm", "copy"], target)
    sh(["dvc", "repro"], target)
    sh(["git", "add", "-A"], target)
    sh([*git, "commit", "-qm", "baseline"], target)
    return target


def grid_seconds(repo: Path, workers: int) -> float:
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // workers))}
    env.pop("MLFLOW_TRACKING_URI", None)
    shutil.rmtree(repo / ".dvc" / "cache" / "runs", ignore_errors=True)
    for lr in GRID:
        sh(["dvc", "exp", "run", "--queue", "-S", f"lr={lr}", "-n", f"j{workers}-lr{lr}"], repo, env)
    started = time.perf_counter()
    sh(["dvc", "queue", "start", "-j", str(workers)], repo, env)
    while True:
        status = sh(["dvc", "queue", "status"], repo, env)
        if not any(state in status for state in ("Queued", "Running")):
            break
        time.sleep(2)
    seconds = time.perf_counter() - started
    unfinished = [line for line in status.splitlines() if f"j{workers}-" in line and "Success" not in line]
    if unfinished:
        raise PipelineError("experiments failed: " + "; ".join(unfinished))
    return seconds


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=6000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv dvc
    with tempfile.TemporaryDirectory(prefix="fashion-queue-") as folder:
        repo = scratch_copy(Path(folder), args.subset)
        seconds = {workers: grid_seconds(repo, workers) for workers in args.workers}
    cores = len(os.sched_getaffinity(0))
    print(f"{len(GRID)}-point grid (lr), data.subset {args.subset}, 1 epoch, {cores} cores")
    for workers, value in seconds.items():
        ratio = value / seconds[args.workers[0]]
        print(f"dvc queue start -j {workers} (OMP_NUM_THREADS={max(1, cores // workers)}): {value:.1f} s, "
              f"{ratio:.2f} x the -j {args.workers[0]} time")
        record("queue_workers", f"j{workers}", {"seconds": value, "grid_points": len(GRID), "subset": args.subset,
                                                "threads_per_stage": max(1, cores // workers), "over_first": ratio})


if __name__ == "__main__":
    main()
