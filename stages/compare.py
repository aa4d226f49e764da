"""Stage compare: grouped per-class bars, shared learning curves, compare.json and a verdict summary."""

import argparse
import csv
import sys
from pathlib import Path

# This checkout's package, not whichever one is installed: DVC runs queued and --temp experiments
# in a copy of the repository, and each must run its own code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import MODEL_NAMES, comparison, plots, tracking
from fashion_compare.errors import PipelineError, exit_on_error
from fashion_compare.evaluation import PER_CLASS_METRICS
from fashion_compare.files import read_json, save_figure, write_csv, write_json, write_text
from fashion_compare.params import load_params

OUT = "plots/compare"


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--predictions", default="data/predictions/test.csv")
    args = parser.parse_args()

    params = load_params(args.params)
    tracker = tracking.Tracker(params.tracking.experiment) if params.tracking.enabled else None
    train = {name: read_json(f"metrics/train_{name}.json") for name in MODEL_NAMES}
    evaluation = read_json("metrics/evaluate.json")
    epochs = {name: read_rows(f"plots/train/{name}_epochs.csv") for name in MODEL_NAMES}
    val_accuracy = {name: [float(row["val_accuracy"]) for row in rows] for name, rows in epochs.items()}
    predictions = evaluation_predictions(args.predictions)
    result = comparison.compare(train, evaluation, val_accuracy, predictions, params.compare, params.seed)

    figures = {}
    for metric in PER_CLASS_METRICS:
        figures[f"{OUT}/{metric}.png"] = plots.grouped_bars(result["per_class"], metric,
                                                            result["verdict"]["confidence"])
        write_csv(f"{OUT}/{metric}_per_class.csv", comparison.per_class_rows(result, metric),
                  ["model", "class", "value", "lower", "upper"])
    figures[f"{OUT}/f1_difference.png"] = plots.forest(result["per_class"], result["verdict"]["confidence"])
    write_csv(f"{OUT}/f1_difference.csv", comparison.f1_difference_rows(result),
              ["class", "difference", "lower", "upper", "winner"])
    figures[f"{OUT}/learning_curves.png"] = plots.learning_curves(
        epochs, {name: read_rows(f"plots/train/{name}_steps.csv") for name in MODEL_NAMES})
    for path, figure in figures.items():
        save_figure(path, figure)
        plots.close(figure)
    summary = comparison.summary_markdown(result)

    run_id = None
    if tracker:
        run_id = start_comparison_run(tracker, train, params)
        result["mlflow_run_id"] = run_id
    try:
        write_text(f"{OUT}/SUMMARY.md", summary)
        write_json("metrics/compare.json", result)
        write_json("metrics/headline.json", comparison.headline(result))
        write_json("metrics/cost.json", comparison.cost(result))
        if tracker:
            log_comparison(tracker, run_id, train, figures, summary, result)
    except BaseException:
        if tracker:
            tracker.end_run_quietly(run_id, "FAILED")
        raise
    if tracker:
        tracker.end_run(run_id)  # FINISHED: every output is written
    print(summary.split("## Verdict")[1].strip())


def evaluation_predictions(path) -> dict:
    """The evaluate stage's per-image predictions: labels and each model's predicted class."""
    import numpy as np

    try:
        rows = read_rows(path)
        return {key: np.array([int(row[column]) for row in rows])
                for key, column in (("label", "label"), *((m, f"{m}_predicted") for m in MODEL_NAMES))}
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run the evaluate stage first (dvc repro evaluate)") from None
    except (KeyError, ValueError) as error:
        raise PipelineError(f"{path}: not the evaluate stage's predictions ({error}); rerun evaluate") from None


def start_comparison_run(tracker, train, params):
    """A parent run for this pipeline run: the two model runs become its children. It carries the params
    that shaped the comparison, and the children's params (prefixed with the model where they differ),
    so that a grid of experiments can be sorted in the runs list."""
    children = {name: train[name]["mlflow_run_id"] for name in MODEL_NAMES if train[name]["mlflow_run_id"]}
    child_params = {name: tracker.run_params(run_id) for name, run_id in children.items()}
    shared = {}
    if len(child_params) == len(MODEL_NAMES):
        resnet, cnn = (child_params[name] for name in MODEL_NAMES)
        for key in sorted(set(resnet) | set(cnn)):
            if resnet.get(key) == cnn.get(key):
                shared[key] = resnet[key]
            else:
                shared.update({f"{name}.{key}": child_params[name].get(key) for name in MODEL_NAMES})
    run_params = {**shared, **{f"compare.{k}": v for k, v in params.compare.model_dump().items()},
                  "seed": params.seed}
    return tracker.start_run("ResNet18 vs CNN", run_params,
                             {**tracking.run_tags("compare"), **{f"{n}_run_id": r for n, r in children.items()}})


def log_comparison(tracker, run_id, train, figures, summary, result):
    verdict = result["verdict"]
    values = {k: float(v) for k, v in verdict.items() if isinstance(v, (int, float))}
    values.update({"mcnemar_p": verdict["mcnemar"]["p_value"], "mcnemar_b": verdict["mcnemar"]["b"],
                   "mcnemar_c": verdict["mcnemar"]["c"]})
    for key in ("accuracy_gain", "macro_f1_gain"):
        values[f"{key}_lower"], values[f"{key}_upper"] = verdict[f"{key}_ci"]
    tracker.log_metrics(run_id, values)
    for path in figures:
        tracker.log_artifact(run_id, path, "comparison")
    tracker.log_text(run_id, summary, "comparison/SUMMARY.md")
    tracker.log_dict(run_id, result, "comparison/compare.json")
    for name in MODEL_NAMES:
        if train[name]["mlflow_run_id"]:
            tracker.set_tags(train[name]["mlflow_run_id"], {"mlflow.parentRunId": run_id, "compare_run_id": run_id})


if __name__ == "__main__":
    main()
