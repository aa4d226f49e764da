"""Benchmark: a 4-seed smoke study on a local Dask cluster (two one-thread workers, resource seed=1) against
DVC's local queue with -j 2, side by side in one run, in scratch copies of this checkout.

    python benchmarks/cluster_study.py [--subset 2000] [--seeds 1 2 3 4]

The cluster path pays for what makes it work across machines: each task clones the study's commit from a
git remote, pulls and pushes DVC's run cache (local folders here) and starts its pipeline from scratch. MLflow
tracking is off in both (no server to share). The figure is their time ratio.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml
from common import exit_on_error, record, say
from queue_workers import scratch_copy, sh
from study_workers import study_seconds


@exit_on_error
def main():
    from distributed import LocalCluster

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    args = parser.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv's dvc
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    with tempfile.TemporaryDirectory(prefix="fashion-cluster-") as folder:
        folder = Path(folder)
        repo = scratch_copy(folder / "repo", args.subset)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["tracking"]["enabled"] = False
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        sh(["dvc", "remote", "add", "-d", "shared", str(folder / "dvc-remote")], repo)
        sh(["git", "add", "-A"], repo)
        sh([*git, "commit", "-qm", "tracking off, a DVC remote"], repo)
        sh(["git", "clone", "-q", "--bare", str(repo), str(folder / "origin.git")], folder)
        sh(["git", "remote", "add", "origin", str(folder / "origin.git")], repo)
        sh(["git", "fetch", "-q", "origin"], repo)
        local = study_seconds(repo, args.seeds, "--jobs", "2")
        say(f"{len(args.seeds)}-seed study, data.subset {args.subset}: DVC's queue -j 2: {local:.1f} s")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"seed": 1},
                          dashboard_address=None) as cluster:
            on_cluster = study_seconds(repo, args.seeds, "--cluster", cluster.scheduler_address)
        say(f"the same on a local Dask cluster (2 workers x 1 thread): {on_cluster:.1f} s, "
            f"{on_cluster / local:.2f} x the queue's time")
        record("cluster_study", f"{len(args.seeds)}_seeds", {"queue_j2_seconds": local, "dask_seconds": on_cluster,
                                                             "dask_over_queue": on_cluster / local,
                                                             "subset": args.subset})


if __name__ == "__main__":
    main()
