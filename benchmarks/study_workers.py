"""Benchmark: a 3-seed smoke study with one seed at a time against two at once (the cores shared).

    python benchmarks/study_workers.py [--subset 6000] [--jobs 1 2]

In a temporary git copy of the repository (a stratified `subset`, 1 epoch), time
`stages/study.py run --seeds 1 2 3 --jobs N` for each N: N Dask workers on this machine, each stage with
cores / N threads. The run cache and the seeds' results are cleared before each measurement, so every
seed really trains. Prints seconds per N and the ratio to the first; records them in metrics/benchmark.json.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import exit_on_error, failed, record, say
from queue_workers import scratch_copy


def study_seconds(repo: Path, seeds, *options) -> float:
    """`stages/study.py run` of `seeds` with `options`, from no results and an empty run cache: seconds."""
    shutil.rmtree(repo / ".dvc" / "cache" / "runs", ignore_errors=True)
    shutil.rmtree(repo / "metrics" / "study", ignore_errors=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "OMP_NUM_THREADS", "DASK_SCHEDULER_ADDRESS")}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "stages/study.py", "run", "--seeds", *map(str, seeds), *options],
                            cwd=repo, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0 or "FAILED" in result.stdout:
        kept = Path(__file__).resolve().parents[1] / "logs" / "benchmarks" / "failed-study.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        logs = "".join(f"\n--- {log}\n{log.read_text()}" for log in sorted((repo / "logs").glob("**/*.log")))
        kept.write_text(result.stdout + result.stderr + logs)
        raise failed(f"study {' '.join(options)} (whole output: {kept})", result)
    return seconds


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=6000)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv's dvc
    cores = len(os.sched_getaffinity(0))
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="fashion-study-") as folder:
        repo = scratch_copy(Path(folder), args.subset)
        for jobs in args.jobs:
            seconds[jobs] = study_seconds(repo, args.seeds, "--jobs", str(jobs))
            ratio = seconds[jobs] / seconds[args.jobs[0]]
            say(f"{len(args.seeds)}-seed study, data.subset {args.subset}, 1 epoch, {cores} cores: --jobs {jobs} "
                f"({max(1, cores // jobs)} thread(s) per stage): {seconds[jobs]:.1f} s, {ratio:.2f} x the "
                f"--jobs {args.jobs[0]} time")
            record("study_workers", f"jobs_{jobs}", {"seconds": seconds[jobs], "seeds": len(args.seeds),
                                                    "subset": args.subset, "threads_per_stage": max(1, cores // jobs),
                                                    "over_first": ratio})


if __name__ == "__main__":
    main()
