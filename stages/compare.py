"""Stage compare: grouped per-class bars, shared learning curves, compare.json and a verdict summary."""

import argparse
import csv
import sys
from pathlib import Path

# This checkout's package, not whichever one is installed: DVC runs queued and --temp experiments
# in a copy of the repository, and each must run its own code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import MODEL_NAMES, comparison, plots, tracking
from fashion_compare.errors import exit_on_error
from fashion_compare.evaluation import PER_CLASS_METRICS
from fashion_compare.files import read_json, save_figure, write_json, write_text
from fashion_compare.params import load_params

OUT = "plots/compare"


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_params(args.params)
    tracker = tracking.Tracker(params.tracking.experiment) if params.tracking.enabled else None
    train = {name: read_json(f"metrics/train_{name}.json") for name in MODEL_NAMES}
    evaluation = read_json("metrics/evaluate.json")
    epochs = {name: read_rows(f"plots/train/{name}_epochs.csv") for name in MODEL_NAMES}
    val_accuracy = {name: [float(row["val_accuracy"]) for row in rows] for name, rows in epochs.items()}
    result = comparison.compare(train, evaluation, params.compare.min_accuracy_gain, val_accuracy)

    figures = {}
    for metric in PER_CLASS_METRICS:
        figures[f"{OUT}/{metric}.png"] = plots.grouped_bars(
            {name: evaluation[name]["per_class"] for name in MODEL_NAMES}, metric)
    figures[f"{OUT}/learning_curves.png"] = plots.learning_curves(
        epochs, {name: read_rows(f"plots/train/{name}_steps.csv") for name in MODEL_NAMES})
    for path, figure in figures.items():
        save_figure(path, figure)
        plots.close(figure)
    summary = comparison.summary_markdown(result)
    write_text(f"{OUT}/SUMMARY.md", summary)

    if tracker:
        result["mlflow_run_id"] = log_comparison(tracker, train, figures, summary, result)
    write_json("metrics/compare.json", result)
    write_json("metrics/headline.json", comparison.headline(result))
    write_json("metrics/cost.json", comparison.cost(result))
    print(summary.split("## Verdict")[1].strip())


def log_comparison(tracker, train, figures, summary, result):
    """A parent run for this pipeline run: the two model runs become its children."""
    children = {name: train[name]["mlflow_run_id"] for name in MODEL_NAMES if train[name]["mlflow_run_id"]}
    run_id = tracker.start_run("ResNet18 vs CNN", {}, {**tracking.run_tags("compare"),
                                                       **{f"{n}_run_id": r for n, r in children.items()}})
    verdict = result["verdict"]
    tracker.log_metrics(run_id, {k: float(v) for k, v in verdict.items() if isinstance(v, (int, float))})
    for path in figures:
        tracker.log_artifact(run_id, path, "comparison")
    tracker.log_text(run_id, summary, "comparison/SUMMARY.md")
    tracker.log_dict(run_id, result, "comparison/compare.json")
    for child in children.values():
        tracker.set_tags(child, {"mlflow.parentRunId": run_id, "compare_run_id": run_id})
    tracker.end_run(run_id)
    return run_id


if __name__ == "__main__":
    main()
