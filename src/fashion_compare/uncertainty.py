"""Is a difference between the two models more than noise? Paired tests on the same test images.

- McNemar's exact test on the paired correctness of the two models: of the images exactly one model
  gets right, b go to the first and c to the second; under "equally accurate" b ~ Binomial(b + c, 1/2).
- A paired bootstrap: resample the test images with replacement (the same resample for both models)
  and take percentile confidence intervals of every metric and of every difference.

Vectorised: a resample is a vector of counts per image (multinomial), so per-class true positives,
predicted and true counts of all resamples are three matrix products.
"""

import numpy as np
from scipy.stats import binomtest

from . import NUM_CLASSES


def mcnemar_exact(y_true, pred_a, pred_b) -> dict:
    """b: A right and B wrong; c: the reverse; p: two-sided exact binomial p-value (1 when b + c = 0)."""
    right_a, right_b = np.asarray(pred_a) == np.asarray(y_true), np.asarray(pred_b) == np.asarray(y_true)
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p_value = binomtest(b, b + c, 0.5, alternative="two-sided").pvalue if b + c else 1.0
    return {"b": b, "c": c, "p_value": float(p_value)}


def _scores(tp, predicted, actual):
    """Per-class precision, recall and F1 from counts (any leading shape), 0 where undefined (as sklearn's
    zero_division=0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(predicted + actual > 0, 2 * tp / (predicted + actual), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1}


def _model_scores(weights, y_true, y_pred):
    """Accuracy, macro F1 and per-class scores for each row of `weights` (counts per image)."""
    classes = np.arange(NUM_CLASSES)
    actual_onehot = (y_true[:, None] == classes).astype(np.float64)
    predicted_onehot = (y_pred[:, None] == classes).astype(np.float64)
    tp = weights @ (actual_onehot * predicted_onehot)
    predicted, actual = weights @ predicted_onehot, weights @ actual_onehot
    scores = _scores(tp, predicted, actual)
    scores["accuracy"] = tp.sum(axis=-1) / weights.sum(axis=-1)
    scores["macro_f1"] = scores["f1"].mean(axis=-1)
    return scores


def paired_bootstrap(y_true, pred_a, pred_b, samples=2000, confidence=0.95, seed=0) -> dict:
    """Point estimates and percentile CIs for A, B and A - B: accuracy, macro F1, and per class
    precision, recall and F1. Each value is {"value", "lower", "upper"}; per-class values are lists in
    class order. Same seed, same answer."""
    y_true, pred_a, pred_b = (np.asarray(a, dtype=np.int64) for a in (y_true, pred_a, pred_b))
    n = len(y_true)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n)) + n * np.arange(samples)[:, None]
    weights = np.bincount(draws.ravel(), minlength=samples * n).reshape(samples, n).astype(np.float64)
    point = np.ones((1, n))
    tails = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]

    def summarise(values, resampled):
        lower, upper = np.percentile(resampled, tails, axis=0)
        return {"value": _tolist(values[0]), "lower": _tolist(lower), "upper": _tolist(upper)}

    result = {}
    estimates = {}
    for name, pred in (("a", pred_a), ("b", pred_b)):
        estimates[name] = (_model_scores(point, y_true, pred), _model_scores(weights, y_true, pred))
    for name in ("a", "b"):
        values, resampled = estimates[name]
        result[name] = {key: summarise(values[key], resampled[key]) for key in values}
    (values_a, resampled_a), (values_b, resampled_b) = estimates["a"], estimates["b"]
    result["difference"] = {key: summarise(values_a[key] - values_b[key], resampled_a[key] - resampled_b[key])
                            for key in values_a}
    result["samples"], result["confidence"], result["seed"] = samples, confidence, seed
    return result


def excludes_zero(interval: dict, index=None) -> bool:
    lower, upper = interval["lower"], interval["upper"]
    if index is not None:
        lower, upper = lower[index], upper[index]
    return lower > 0 or upper < 0


def _tolist(value):
    return value.tolist() if isinstance(value, np.ndarray) else float(value)
