"""Benchmark: the study's one engine, a 4-seed smoke study three ways, side by side in one run, each in a
scratch copy: the local path (`--jobs 2`: the LocalCluster the driver starts), the same tasks sent to a local
Dask cluster started by hand (`--cluster`: the cluster path, each task cloning from a git remote and fetching
and pushing DVC's run cache), and the previous engine (DVC's queue, `dvc queue start -j 2`) from the commit
before it was replaced.

    python benchmarks/cluster_study.py [--subset 2000] [--seeds 1 2 3 4] [--previous b7144d1] [--report PATH]

MLflow tracking is off in all three (no server to share). The figures are their time ratios.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml
from common import REPORT, exit_on_error, record, say
from queue_workers import scratch_copy, sh
from study_workers import study_seconds

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]


def study_copy(folder: Path, subset: int, rev=None) -> Path:
    """A scratch copy with tracking off, a DVC remote and a bare git remote (origin) holding its commit."""
    repo = scratch_copy(folder / "repo", subset, rev)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "remote", "add", "-d", "shared", str(folder / "dvc-remote")], repo)
    sh(["git", "add", "-A"], repo)
    sh([*GIT, "commit", "-qm", "tracking off, a DVC remote"], repo)
    sh(["git", "clone", "-q", "--bare", str(repo), str(folder / "origin.git")], folder)
    sh(["git", "remote", "add", "origin", str(folder / "origin.git")], repo)
    sh(["git", "fetch", "-q", "origin"], repo)
    return repo


@exit_on_error
def main():
    from distributed import LocalCluster

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--previous", default="b7144d1", help="the commit of the previous engine (DVC's queue)")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv's dvc
    label, key = f"{len(args.seeds)}-seed study, data.subset {args.subset}", f"{len(args.seeds)}_seeds"
    figures = {"subset": args.subset, "previous_engine": args.previous}
    with tempfile.TemporaryDirectory(prefix="fashion-engine-") as folder:
        repo = study_copy(Path(folder) / "now", args.subset)
        local = figures["local_path_seconds"] = study_seconds(repo, args.seeds, "--jobs", "2")
        say(f"{label}: the local path (LocalCluster, 2 workers x 1 thread): {local:.1f} s")
        record("cluster_study", key, figures, path=args.report)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"seed": 1},
                          dashboard_address=None) as cluster:
            by_hand = figures["cluster_by_hand_seconds"] = study_seconds(repo, args.seeds, "--cluster",
                                                                          cluster.scheduler_address)
        figures["cluster_over_local"] = by_hand / local
        say(f"{label}: a local Dask cluster started by hand (the cluster path): {by_hand:.1f} s, "
            f"{by_hand / local:.2f} x the local path's time")
        record("cluster_study", key, figures, path=args.report)
        previous = study_copy(Path(folder) / "previous", args.subset, args.previous)
        queue = figures["dvc_queue_seconds"] = study_seconds(previous, args.seeds, "--jobs", "2")
        figures["local_over_queue"] = local / queue
        say(f"{label}: the previous engine (DVC's queue -j 2, commit {args.previous}): {queue:.1f} s; the local "
            f"path takes {local / queue:.2f} x its time")
        record("cluster_study", key, figures, path=args.report)


if __name__ == "__main__":
    main()
