"""Stages train_baseline and train@<contender>: train one model of params.yaml's `models`, keep its
best-validation checkpoint, log to MLflow.

Interrupted (Ctrl-C, SIGTERM, SIGKILL, or the `dvc` that started it killed), the stage goes on from its
last finished epoch when run again with the same config: the state is kept in .resume/<model>.pt until
every output is written.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

# This checkout's package, not whichever one is installed: DVC runs queued and --temp experiments
# in a copy of the repository, and each must run its own code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashion_compare import data, models, process, records, tracking, training
from fashion_compare.errors import exit_on_error
from fashion_compare.files import check_writable, save_torch, write_csv, write_json
from fashion_compare.params import load_params, train_config


def output_paths(name: str) -> dict:
    return {"checkpoint": f"models/{name}.pt", "epochs": f"plots/train/{name}_epochs.csv",
            "steps": f"plots/train/{name}_steps.csv", "metrics": f"metrics/train/{name}.json"}


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="a model's name in params.yaml's models")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/prepared")
    args = parser.parse_args()
    process.raise_on_sigterm()
    process.stop_with_parent()
    stage_started = time.perf_counter()

    name = args.model
    params = load_params(args.params)
    config = train_config(params, name)
    device = training.select_device(config.device)
    torch.set_num_threads(training.thread_count(params.threads))
    process.keep_freed_memory()
    outputs = output_paths(name)
    training.seed_everything(config.seed)
    model = models.build_model(config.architecture, config.options)
    parameter_count = models.parameter_count(model)
    resume_path = Path(".resume") / f"{name}.pt"
    check_writable([*outputs.values(), resume_path], free_bytes_needed=4 * 4 * parameter_count + 2**27)

    with process.exclusive(resume_path.with_suffix(".lock"), f"a training of {name}"):
        train_set, val_set = data.load_split(args.data, "train"), data.load_split(args.data, "val")
        resume = training.ResumeFile(resume_path, training.fingerprint(config, train_set, val_set))
        saved = resume.load()
        tracker = tracking.connect(params.tracking)
        run_params = records.training_params(config, device, params.data, len(train_set["labels"]), parameter_count)
        with tracking.stage_run(tracker, f"train_{name}", params.title(name), run_params,
                                resume_run_id=saved.get("mlflow_run_id") if saved else None) as run_id:
            resume.metadata["mlflow_run_id"] = run_id
            logger = tracking.EpochLogger(tracker, run_id) if run_id else None
            observers = [process.ParentCheck(), *([logger] if logger else [])]
            result = training.train(model, train_set, val_set, config, device, observers=observers,
                                    resume=resume, state=saved)
            save_torch(outputs["checkpoint"], training.checkpoint(result, config, parameter_count))
            write_csv(outputs["epochs"], result.epoch_rows(name), training.EPOCH_FIELDS)
            write_csv(outputs["steps"], result.step_rows(name), training.STEP_FIELDS)
            summary = {**training.summary(result, config, parameter_count, device), "mlflow_run_id": run_id}
            if logger:
                logger.flush()
                summary.update(records.log_training_end(tracker, run_id, name, model, result,
                                                        val_set["images"][:2].numpy(), params.tracking, stage_started))
            write_json(outputs["metrics"], summary)
        resume.remove()  # every output is written, and the run FINISHED


if __name__ == "__main__":
    main()
