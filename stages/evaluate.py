"""Stage evaluate: both checkpoints on the test set; per-class metrics, confusion matrices, inference cost."""

import argparse
import sys
from pathlib import Path

import torch

# This checkout's package, not whichever one is installed: DVC runs queued and --temp experiments
# in a copy of the repository, and each must run its own code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import CLASS_NAMES, MODEL_NAMES, data, evaluation, plots, tracking, training
from fashion_compare.errors import exit_on_error
from fashion_compare.files import read_json, write_csv, write_json
from fashion_compare.models import MODEL_TITLES
from fashion_compare.params import load_params


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/prepared")
    args = parser.parse_args()

    params = load_params(args.params)
    device = training.select_device(params.device)
    torch.set_num_threads(training.thread_count(params.threads))
    tracker = tracking.Tracker(params.tracking.experiment) if params.tracking.enabled else None
    test_set = data.load_split(args.data, "test")
    y_true = test_set["labels"].numpy()

    results, probabilities = {}, {}
    for name in MODEL_NAMES:
        model, _ = training.load_checkpoint(f"models/{name}.pt", expected_model=name)
        probabilities[name] = evaluation.predict_probabilities(model, test_set["images"],
                                                               params.evaluate.batch_size, device)
        y_pred = probabilities[name].argmax(axis=1)
        result = evaluation.classification_metrics(y_true, y_pred)
        result.update(evaluation.measure_inference(model, test_set["images"], params.evaluate.batch_size,
                                                   device, params.evaluate.latency_repeats))
        result["mlflow_run_id"] = read_json(f"metrics/train_{name}.json").get("mlflow_run_id")
        results[name] = result
        write_csv(f"plots/evaluate/confusion_{name}.csv", evaluation.confusion_rows(y_true, y_pred),
                  ["actual", "predicted"])
        if tracker and result["mlflow_run_id"]:
            if tracker.has_run(result["mlflow_run_id"]):
                log_evaluation(tracker, result, evaluation.report_text(y_true, y_pred), MODEL_TITLES[name])
            else:
                print(f"warning: MLflow run {result['mlflow_run_id']} of {name} is not in {tracker.uri}; "
                      "test metrics not logged (was it trained with another MLFLOW_TRACKING_URI?)")

    rows = evaluation.prediction_rows(y_true, probabilities)
    write_csv("data/predictions/test.csv", rows, list(rows[0]))
    write_json("metrics/evaluate.json", results)


def log_evaluation(tracker, result, report, title):
    """Add the test metrics to the model's training run, resumed by its id."""
    run_id = result["mlflow_run_id"]
    values = {"test_accuracy": result["accuracy"], "test_latency_ms_per_image": result["latency_ms_per_image"]}
    for average in ("macro_avg", "weighted_avg"):
        for metric in evaluation.PER_CLASS_METRICS:
            values[f"test_{metric}_{average.split('_')[0]}"] = result[average][metric]
    for name in CLASS_NAMES:
        for metric in evaluation.PER_CLASS_METRICS:
            values[f"test_{metric}_{tracking.metric_key(name)}"] = result["per_class"][name][metric]
    tracker.log_metrics(run_id, values)
    tracker.log_text(run_id, report, "evaluation/classification_report.txt")
    tracker.log_dict(run_id, {k: v for k, v in result.items() if k != "mlflow_run_id"},
                     "evaluation/classification_report.json")
    figure = plots.confusion_figure(result["confusion_matrix"], f"{title}: test confusion matrix")
    tracking.log_figure(tracker, run_id, figure, "evaluation/confusion_matrix.png")
    plots.close(figure)


if __name__ == "__main__":
    main()
