"""Test-set metrics with scikit-learn, and measured inference cost."""

import time

import numpy as np
import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

from . import CLASS_NAMES, PREDICTIONS_FILE
from .errors import PipelineError


@torch.inference_mode()
def predict_probabilities(model, images, batch_size, device) -> np.ndarray:
    """Softmax probabilities, N x classes (float64, so that rows sum to 1 within rounding)."""
    model.eval().to(device)
    batches = [torch.softmax(model(images[start:start + batch_size].to(device)).double(), dim=1).cpu()
               for start in range(0, len(images), batch_size)]
    return torch.cat(batches).numpy()


def prediction_rows(y_true, probabilities: dict) -> list:
    """One row per test image, in the test set's order: label, and per model its predicted class, the
    probability of that class and of every class (what compare's paired statistics are computed from)."""
    rows = []
    for index, label in enumerate(y_true):
        row = {"image": index, "label": int(label)}
        for model, probs in probabilities.items():
            row[f"{model}_predicted"] = int(probs[index].argmax())
            row[f"{model}_probability"] = round(float(probs[index].max()), 6)
            row.update({f"{model}_p{k}": round(float(p), 6) for k, p in enumerate(probs[index])})
        rows.append(row)
    return rows


def write_predictions(path, y_true, probabilities: dict):
    from .files import write_csv

    rows = prediction_rows(y_true, probabilities)
    write_csv(path, rows, list(rows[0]))


def read_predictions(models, path=PREDICTIONS_FILE) -> dict:
    """What compare needs of the predictions file: the labels and each of `models`' predicted class, as arrays
    in test-set order ({"label": ..., <model>: ...})."""
    from .files import read_csv_rows

    rows = read_csv_rows(path, "the evaluate stage (dvc repro evaluate)")
    try:
        return {key: np.array([int(row[column]) for row in rows])
                for key, column in (("label", "label"), *((m, f"{m}_predicted") for m in models))}
    except (KeyError, ValueError, TypeError) as error:
        raise PipelineError(f"{path}: not the evaluate stage's predictions ({error}); rerun evaluate") from None


def classification_metrics(y_true, y_pred) -> dict:
    """Accuracy, macro/weighted averages, per-class precision/recall/F1/support, confusion matrix."""
    labels = list(range(len(CLASS_NAMES)))
    report = classification_report(y_true, y_pred, labels=labels, target_names=CLASS_NAMES,
                                   output_dict=True, zero_division=0)
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "macro_avg": _rename(report["macro avg"]),
        "weighted_avg": _rename(report["weighted avg"]),
        "per_class": {name: _rename(report[name]) for name in CLASS_NAMES},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def report_text(y_true, y_pred) -> str:
    return classification_report(y_true, y_pred, labels=list(range(len(CLASS_NAMES))),
                                 target_names=CLASS_NAMES, digits=4, zero_division=0)


def _rename(scores: dict) -> dict:
    return {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1-score"],
            "support": int(scores["support"])}


@torch.inference_mode()
def measure_inference(model, images, batch_size, device, repeats) -> dict:
    """Latency of one image (median of `repeats` single-image calls) and batched throughput."""
    model.eval().to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    single = images[:1].to(device)
    for _ in range(5):  # warm-up
        model(single)
    timings = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        model(single)
        sync()
        timings.append(time.perf_counter() - started)
    batch = images[:batch_size].to(device)
    model(batch)
    sync()
    started = time.perf_counter()
    model(batch)
    sync()
    batch_seconds = time.perf_counter() - started
    return {"latency_ms_per_image": 1000 * float(np.median(timings)),
            "throughput_images_per_s": len(batch) / batch_seconds}


def confusion_rows(y_true, y_pred) -> list:
    """DVC's confusion template wants one row per sample."""
    return [{"actual": CLASS_NAMES[t], "predicted": CLASS_NAMES[p]} for t, p in zip(y_true, y_pred)]
