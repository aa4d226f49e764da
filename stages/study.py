"""Command `make study`: the pipeline once per seed, then the study's aggregate.

    python stages/study.py run [--seeds 42 43] [--jobs 2] [--cluster tcp://host:8786]   the missing seeds
    python stages/study.py aggregate [--seeds ...]          metrics/study.json, plots/study/, an MLflow run
    python stages/study.py all [--recipe tuned]             both (what `make study [RECIPE=tuned]` runs)

Not a DVC stage: its seeds are Dask tasks, each a DVC experiment, on this machine or a cluster (engine.py).
Each finished seed is written to metrics/study/seeds/<seed>/ (a tuned recipe's: metrics/study_<recipe>/seeds/),
kept in git, so `run` again, here or elsewhere, runs only the missing seeds. One driver per workspace at a
time; exits 1 when a seed failed, after aggregating what finished.
"""

import argparse
import sys
from pathlib import Path

# This checkout's package, not whichever one is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import process, study, study_aggregate, study_runs, tracking  # noqa: E402
from fashion_compare.engine import scheduler_address  # noqa: E402
from fashion_compare.errors import PipelineError, exit_on_error  # noqa: E402
from fashion_compare.params import load_params  # noqa: E402
from fashion_compare.seed_folders import load_recipe, results_exist  # noqa: E402

LOCK = Path(".dvc/tmp/study.lock")


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "aggregate", "all"])
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="default: the study's seeds (reference: study.seeds in params.yaml; tuned: its "
                             "committed aggregate's, or its pilot, the first five of study.seeds); a tuned study adds "
                             "those named")
    parser.add_argument("--jobs", type=int, help="seeds at once (default: study.jobs)")
    parser.add_argument("--cluster", help="a Dask scheduler (default: DASK_SCHEDULER_ADDRESS; none: this machine)")
    parser.add_argument("--recipe", default="reference",
                        help="reference (params.yaml), tuned (make tune's) or tuned_subset (the first search's)")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="train again the seeds whose committed results another code made (stale)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    process.raise_on_sigterm()
    study_runs.check_repository_root(args.params)
    params = load_params(args.params)
    recipe, address = load_recipe(args.recipe, params.compare.models), scheduler_address(args.cluster)
    study_seeds = recipe.study_seeds(params.study.seeds, args.seeds or ())
    seeds, jobs = args.seeds or study_seeds, args.jobs if args.jobs is not None else params.study.jobs
    study_runs.check_arguments(seeds, jobs)
    failed = {}
    with process.exclusive(LOCK, "a seed study"):
        if args.command in ("run", "all"):
            failed = study_runs.run_seeds(recipe, seeds, jobs, params.model_dump(), address, args.rerun_stale)
        all_seeds = study_seeds if args.command == "all" else seeds
        missing = [seed for seed in all_seeds if not results_exist(recipe.seed_dir(seed))]
        if args.command == "all" and missing:
            print(f"the study's seeds not all run yet (missing: {', '.join(map(str, missing))}): the aggregate "
                  "waits for them; run them here or on another machine, then `make study` again")
        elif args.command in ("aggregate", "all"):
            result = study_aggregate.write_study(recipe, all_seeds, params, tracking.connect(params.tracking))
            step = study.next_step(result, all_seeds, recipe.name)
            if step:
                print(f"next: {step}")
    if failed:
        print("\n".join(f"seed {seed} failed: {why}" for seed, why in failed.items()), file=sys.stderr)
        raise PipelineError(f"seeds {', '.join(map(str, failed))} failed (their reasons above, in failed.json and "
                            "logs/study/); run `make study` again to retry them")

if __name__ == "__main__":
    main()
