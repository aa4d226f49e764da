"""Command `make study`: the pipeline once per seed, each a DVC experiment, then the study's aggregate.

    python stages/study.py run [--seeds 42 43] [--jobs 2]   run the seeds that have no current results
    python stages/study.py aggregate [--seeds ...]          metrics/study.json, plots/study/, an MLflow run
    python stages/study.py all                              both (what `make study` runs)

Not a DVC stage: it drives DVC (src/fashion_compare/study_runs.py says how). As each seed finishes, its
metrics and per-image test predictions are written to metrics/study/seeds/<seed>/ (kept in git): a study
cut short keeps every finished seed, and `run` again (here, or on another machine from what is committed)
runs only the seeds that are missing. One driver per workspace at a time. Exits 1 when a seed failed (after
aggregating what finished). See docs/team.md for splitting a study over machines.
"""

import argparse
import sys
from pathlib import Path

import yaml

# This checkout's package, not whichever one is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import plots, process, records, study, tracking  # noqa: E402
from fashion_compare.cluster import scheduler_address  # noqa: E402
from fashion_compare.errors import PipelineError, exit_on_error  # noqa: E402
from fashion_compare.files import check_writable, save_figure, together, write_csv, write_json, write_text  # noqa: E402
from fashion_compare.params import load_params  # noqa: E402
from fashion_compare.study_runs import check_arguments, load_study, results_exist, run_seeds  # noqa: E402

OUT = Path("plots/study")
FIGURES = {"accuracy_per_seed": plots.seed_accuracy, "f1_difference": plots.seed_forest,
           "gain_per_seed": plots.seed_gains, "noise_sources": plots.noise_sources}
LOCK = Path(".dvc/tmp/study.lock")


def aggregate(seeds: list, params, tracker):
    """metrics/study.json, plots/study/ and the study's MLflow run, from the seeds' committed results: every
    seed folder validated and every output checked writable first, then all outputs written or none."""
    check_writable([*(OUT / f"{name}.png" for name in FIGURES), *(OUT / name for name in study.PLOT_TABLES),
                    OUT / "SUMMARY.md", "metrics/study.json"])
    runs, failed = load_study(seeds)
    for seed, why in failed.items():
        print(f"warning: seed {seed} failed and is left out of the study: {why}")
    result = study.aggregate(runs, params.compare, failed)
    summary = study.summary_markdown(result)
    figures = {OUT / f"{name}.png": draw(result) for name, draw in FIGURES.items()}
    tables = study.plot_rows(result)
    run_params = {"seeds": " ".join(map(str, result["seeds"])), "k": result["k"],
                  **{k: v for k, v in study.comparable_params(runs[0].params).items()},
                  **{f"compare.{k}": v for k, v in params.compare.model_dump().items()}}
    with tracking.stage_run(tracker, "study", f"Seed study ({result['k']} seeds)", run_params) as run_id:
        with together():
            for path, figure in figures.items():
                save_figure(path, figure)
            for path, rows, fields in tables:
                write_csv(OUT / path, rows, fields)
            write_text(OUT / "SUMMARY.md", summary)
            write_json("metrics/study.json", {**result, "mlflow_run_id": run_id})
        if run_id:
            records.log_study(tracker, run_id, result, figures, summary)
    for figure in figures.values():
        plots.close(figure)
    print(summary.split("## Verdict")[1].strip())
    return result


def check_repository_root(params_path: str):
    if not Path("dvc.yaml").is_file() or not Path(params_path).is_file():
        raise PipelineError(f"{Path.cwd()}: no dvc.yaml or {params_path} here; run the study from the repository "
                            "root (where dvc.yaml is)")


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "aggregate", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", help="default: study.seeds in params.yaml")
    parser.add_argument("--jobs", type=int, help="seeds at once (default: study.jobs)")
    parser.add_argument("--cluster", help="a Dask scheduler's address (default: DASK_SCHEDULER_ADDRESS; none: "
                                          "DVC's local queue)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    process.raise_on_sigterm()
    check_repository_root(args.params)
    params = load_params(args.params)
    raw_params = yaml.safe_load(Path(args.params).read_text())
    seeds = args.seeds or params.study.seeds
    check_arguments(seeds, args.jobs if args.jobs is not None else params.study.jobs)
    failed = {}
    with process.exclusive(LOCK, "a seed study"):
        if args.command in ("run", "all"):
            failed = run_seeds(seeds, args.jobs if args.jobs is not None else params.study.jobs, raw_params,
                               scheduler_address(args.cluster))
        if args.command in ("aggregate", "all"):
            all_seeds = params.study.seeds if args.command == "all" else seeds
            missing = [seed for seed in all_seeds if not results_exist(seed)]
            if args.command == "all" and missing:
                print(f"study.seeds not all run yet (missing: {', '.join(map(str, missing))}): the aggregate waits "
                      "for them; run them here or on another machine, then `make study` again")
            else:
                result = aggregate(all_seeds, params, tracking.connect(params.tracking))
                step = study.next_step(result, params.study.seeds)
                if step:
                    print(f"next: {step}")
    if failed:
        for seed, why in failed.items():
            print(f"seed {seed} failed: {why}", file=sys.stderr)
        raise PipelineError(f"seeds {', '.join(map(str, failed))} failed (their reasons above, in failed.json and "
                            "logs/study/); run `make study` again to retry them")


if __name__ == "__main__":
    main()
