"""Stage evaluate: every compared model's checkpoint on the test set; per-class metrics, confusion matrices,
inference cost.

Every input is read and checked, and every result computed, before the first output is written; each output
is written whole (a temporary file, then a rename), and MLflow is told only after all of them: a stage that
fails on its inputs leaves the outputs and MLflow runs of the last good run as they were.
"""

import argparse
import sys
from pathlib import Path

import torch

# This checkout's package, not whichever one is installed: DVC runs queued and --temp experiments
# in a copy of the repository, and each must run its own code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import cpu_speedups, data, evaluation, models, process, records, tracking, training
from fashion_compare.errors import exit_on_error
from fashion_compare.files import read_json, write_csv, write_json
from fashion_compare.params import load_params


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/prepared")
    args = parser.parse_args()
    process.raise_on_sigterm()
    process.stop_with_parent()

    params = load_params(args.params)
    device = training.select_device(params.device)
    torch.set_num_threads(training.thread_count(params.threads))
    test_set = data.load_split(args.data, "test")
    compared = params.compare.models  # the baseline, then each contender
    checkpoints = {name: models.load_checkpoint(f"models/{name}.pt", expected_model=name)[0] for name in compared}
    if device.type == "cpu":  # the convolutions as training's validation ran them (equal up to rounding)
        checkpoints = {name: cpu_speedups.use_small_map_convolutions(model) for name, model in checkpoints.items()}
    run_ids = {name: read_json(f"metrics/train/{name}.json").get("mlflow_run_id") for name in compared}
    tracker = tracking.connect(params.tracking)

    y_true = test_set["labels"].numpy()
    results, probabilities = {}, {}
    for name, model in checkpoints.items():
        probabilities[name] = evaluation.predict_probabilities(model, test_set["images"],
                                                               params.evaluate.batch_size, device)
        results[name] = {**evaluation.classification_metrics(y_true, probabilities[name].argmax(axis=1)),
                         **evaluation.measure_inference(model, test_set["images"], params.evaluate.batch_size,
                                                        device, params.evaluate.latency_repeats),
                         "mlflow_run_id": run_ids[name]}

    for name in compared:
        write_csv(f"plots/evaluate/confusion_{name}.csv",
                  evaluation.confusion_rows(y_true, probabilities[name].argmax(axis=1)), ["actual", "predicted"])
    evaluation.write_predictions(evaluation.PREDICTIONS_FILE, y_true, probabilities)
    write_json("metrics/evaluate.json", results)

    for name, run_id in tracking.existing_runs(tracker, run_ids).items():
        records.log_evaluation(tracker, run_id, params.title(name), results[name], y_true,
                               probabilities[name].argmax(axis=1))

if __name__ == "__main__":
    main()
