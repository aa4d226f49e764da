"""Stage compare: each contender against the baseline: grouped per-class bars, shared learning curves,
compare.json and a verdict summary."""

import argparse
import sys
from pathlib import Path

# This checkout's package, not whichever one is installed: DVC runs queued and --temp experiments
# in a copy of the repository, and each must run its own code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import (
    PER_CLASS_METRICS,
    comparison,
    evaluation,
    plots,
    process,
    records,
    reports,
    results,
    tracking,
)
from fashion_compare.errors import exit_on_error
from fashion_compare.files import read_csv_rows, read_json, save_figure, write_csv, write_json, write_text
from fashion_compare.params import load_params

OUT = "plots/compare"


def write_plot_tables(result: results.Comparison, titles: dict):
    for metric in PER_CLASS_METRICS:
        write_csv(f"{OUT}/{metric}_per_class.csv", reports.per_class_rows(result, metric, titles),
                  ["model", "class", "value", "lower", "upper"])
    for name, contender in result.contenders.items():
        write_csv(f"{OUT}/f1_difference/{name}.csv", reports.f1_difference_rows(contender, titles),
                  ["class", "difference", "lower", "upper", "winner"])


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--predictions", default=evaluation.PREDICTIONS_FILE)
    args = parser.parse_args()
    process.raise_on_sigterm()
    process.stop_with_parent()

    params = load_params(args.params)
    compared, titles = params.compare.models, params.titles
    train = {name: read_json(f"metrics/train/{name}.json") for name in compared}
    evaluated = read_json("metrics/evaluate.json")
    epochs = {name: read_csv_rows(f"plots/train/{name}_epochs.csv") for name in compared}
    steps = {name: read_csv_rows(f"plots/train/{name}_steps.csv") for name in compared}
    predictions = evaluation.read_predictions(compared, args.predictions)
    tracker = tracking.connect(params.tracking)

    val_accuracy = {name: [float(row["val_accuracy"]) for row in rows] for name, rows in epochs.items()}
    result = comparison.compare(train, evaluated, val_accuracy, predictions, params.compare, params.seed)
    confidence = params.compare.confidence
    figures = {f"{OUT}/figures/{metric}.png": plots.grouped_bars(result, metric, titles, confidence)
               for metric in PER_CLASS_METRICS}
    for name, contender in result.contenders.items():
        figures[f"{OUT}/figures/f1_difference_{name}.png"] = plots.forest(contender, name, result.baseline, titles,
                                                                         confidence)
    figures[f"{OUT}/figures/learning_curves.png"] = plots.learning_curves(epochs, steps, titles,
                                                                          params.compare.baseline)
    summary = reports.comparison_summary(result, titles)

    child_run_ids = tracking.existing_runs(tracker, {name: train[name]["mlflow_run_id"] for name in compared})
    child_params = {name: tracker.run_params(run_id) for name, run_id in child_run_ids.items()}
    run_params = records.comparison_run_params(child_params, params.compare.model_dump(), params.seed)
    tags = {f"{name}_run_id": run_id for name, run_id in child_run_ids.items()}
    title = f"{', '.join(titles[name] for name in params.compare.contenders)} vs {titles[params.compare.baseline]}"
    with tracking.stage_run(tracker, "compare", title, run_params, tags) as run_id:
        result = results.with_run_id(result, run_id)
        write_plot_tables(result, titles)
        for path, figure in figures.items():
            save_figure(path, figure)
            plots.close(figure)
        write_text(f"{OUT}/SUMMARY.md", summary)
        results.write("metrics/compare.json", result)
        write_json("metrics/headline.json", comparison.headline(result))
        write_json("metrics/cost.json", comparison.cost(result))
        if run_id:
            records.log_comparison(tracker, run_id, child_run_ids, figures, summary, result)
    print("\n".join(reports.comparison_verdicts(result, titles)).strip())


if __name__ == "__main__":
    main()
