"""Command `make study`: the pipeline once per seed, each a DVC experiment, then the study's aggregate.

    python stages/study.py run [--seeds 42 43] [--jobs 2]   run the seeds that have no results yet
    python stages/study.py aggregate [--seeds ...]          metrics/study.json, plots/study/, an MLflow run

Not a DVC stage: it drives DVC. Each seed is a DVC experiment, `-S seed=<seed>` (the same params and code, only
the seed differs): with jobs 1 `dvc exp run --temp`, one after another; with more, `dvc exp run --queue` and
`dvc queue start -j <jobs>`, the workers sharing the cores (OMP_NUM_THREADS = cores / jobs), and a remainder
that cannot fill the workers alone with every core. A stage that
ran before with the same params and code is restored from DVC's run cache, not retrained. As each seed
finishes, its metrics and per-image test predictions are written to metrics/study/seeds/<seed>/ (kept in
git): a study cut short keeps every finished seed, and `run` again (here, or on another machine from what
is committed) runs only the seeds that are missing. See docs/team.md for splitting a study over machines.
"""

import argparse
import sys
from pathlib import Path

import yaml

# This checkout's package, not whichever one is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import plots, process, records, study, tracking  # noqa: E402
from fashion_compare.errors import exit_on_error  # noqa: E402
from fashion_compare.files import save_figure, write_csv, write_json, write_text  # noqa: E402
from fashion_compare.params import load_params  # noqa: E402
from fashion_compare.study_runs import comparable, has_results, load_study, run_seeds  # noqa: E402

OUT = Path("plots/study")


def aggregate(seeds: list, params, tracker):
    """metrics/study.json, plots/study/ and the study's MLflow run, from the seeds' committed results."""
    runs, failed = load_study(seeds)
    for seed, why in failed.items():
        print(f"warning: seed {seed} failed and is left out of the study: {why}")
    result = study.aggregate(runs, params.compare, failed)
    summary = study.summary_markdown(result)
    figures = {OUT / "accuracy_per_seed.png": plots.seed_accuracy(result),
               OUT / "f1_difference.png": plots.seed_forest(result),
               OUT / "gain_per_seed.png": plots.seed_gains(result)}
    run_params = {"seeds": " ".join(map(str, result["seeds"])), "k": result["k"],
                  **{k: v for k, v in comparable(runs[0].params).items() if not k.startswith("compare.")},
                  **{f"compare.{k}": v for k, v in params.compare.model_dump().items()}}
    name = f"Seed study ({result['k']} seeds)"
    with tracking.stage_run(tracker, "study", name, run_params) as run_id:
        for path, figure in figures.items():
            save_figure(path, figure)
            plots.close(figure)
        for path, rows, fields in study.plot_rows(result):
            write_csv(OUT / path, rows, fields)
        write_text(OUT / "SUMMARY.md", summary)
        write_json("metrics/study.json", {**result, "mlflow_run_id": run_id})
        if run_id:
            records.log_study(tracker, run_id, result, figures, summary)
    print(summary.split("## Verdict")[1].strip())


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "aggregate", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", help="default: study.seeds in params.yaml")
    parser.add_argument("--jobs", type=int, help="seeds at once (default: study.jobs)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    process.raise_on_sigterm()
    params = load_params(args.params)
    raw_params = yaml.safe_load(Path(args.params).read_text())
    seeds = args.seeds or params.study.seeds
    if args.command in ("run", "all"):
        failed = run_seeds(seeds, args.jobs or params.study.jobs, raw_params)
        if failed:
            print(f"seeds {', '.join(map(str, failed))} failed; run again to retry them")
    if args.command in ("aggregate", "all"):
        all_seeds = params.study.seeds
        missing = [seed for seed in all_seeds if not has_results(seed)]
        if args.command == "all" and missing:
            print(f"study.seeds not all run yet (missing: {', '.join(map(str, missing))}): the aggregate waits "
                  "for them; run them here or on another machine, then `make study` again")
            return
        tracker = tracking.connect(params.tracking)
        aggregate(all_seeds if args.command == "all" else seeds, params, tracker)


if __name__ == "__main__":
    main()
