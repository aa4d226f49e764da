"""Stages train_resnet and train_cnn: train one model, keep its best-validation checkpoint, log to MLflow."""

import argparse
import platform
import time

import torch

from fashion_compare import MODEL_NAMES, data, models, tracking, training
from fashion_compare.errors import exit_on_error
from fashion_compare.files import save_torch, write_csv, write_json
from fashion_compare.params import load_params, train_config


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=MODEL_NAMES)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/prepared")
    args = parser.parse_args()
    stage_started = time.perf_counter()

    params = load_params(args.params)
    config = train_config(params, args.model)
    device = training.select_device(config.device)
    tracker = tracking.Tracker(params.tracking.experiment) if params.tracking.enabled else None
    train_set, val_set = data.load_split(args.data, "train"), data.load_split(args.data, "val")

    training.seed_everything(config.seed)
    model = models.build_model(args.model)
    parameter_count = models.parameter_count(model)
    observers, run_id = [], None
    if tracker:
        run_params = {**config.model_dump(), "device": str(device), "val_fraction": params.data.val_fraction,
                      "subset": params.data.subset, "train_size": len(train_set["labels"]),
                      "torch_version": torch.__version__, "python_version": platform.python_version(),
                      "parameter_count": parameter_count}
        run_id = tracker.start_run(f"{models.MODEL_TITLES[args.model]}", run_params,
                                   tracking.run_tags(f"train_{args.model}", args.params))
        observers.append(tracking.EpochLogger(tracker, run_id))

    try:
        result = training.train(model, train_set, val_set, config, observers=observers,
                                eval_batch_size=params.evaluate.batch_size)
    except BaseException:  # interrupted or crashed: the MLflow run must not stay RUNNING
        if tracker:
            tracker.end_run(run_id, "FAILED")
        raise

    save_torch(f"models/{args.model}.pt", training.checkpoint(result, config, parameter_count))
    write_csv(f"plots/train/{args.model}_epochs.csv", result.epoch_rows(args.model),
              ["model", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"])
    write_csv(f"plots/train/{args.model}_steps.csv", result.step_rows(args.model),
              ["model", "step", "epoch", "train_loss"])
    summary = {"model": args.model, "parameter_count": parameter_count, "epochs": config.epochs,
               "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
               "final_val_accuracy": result.epochs[-1].val_accuracy,
               "final_train_loss": result.epochs[-1].train_loss, "train_seconds": result.train_seconds,
               "device": str(device), "mlflow_run_id": run_id}
    if tracker:
        model.load_state_dict(result.best_state)
        example = val_set["images"][:2].numpy()
        registered = f"fashion-mnist-{args.model}" if params.tracking.register_model else None
        if params.tracking.log_model:
            summary["mlflow_model_uri"] = tracker.log_model(run_id, model, example, registered)
        tracker.log_metrics(run_id, {"best_val_accuracy": result.best_val_accuracy,
                                     "train_seconds": result.train_seconds})
        tracker.end_run(run_id)
        stage_seconds = time.perf_counter() - stage_started
        summary["tracking_seconds"] = tracker.seconds
        summary["tracking_metrics_seconds"] = result.observer_seconds
        summary["tracking_overhead"] = tracker.seconds / stage_seconds
    write_json(f"metrics/train_{args.model}.json", summary)


if __name__ == "__main__":
    main()
