"""Is a difference between the two models more than noise? Paired statistics on the same test images.

- McNemar's exact test on the paired correctness of the two models: of the images exactly one model
  gets right, b go to the first and c to the second; under "equally accurate" b ~ Binomial(b + c, 1/2).
- A paired bootstrap: resample the test images with replacement (the same resample for both models)
  and take percentile confidence intervals of every metric and of every difference.
- Both sources of noise (a seed study): `two_way` decomposes per-image values over seeds x images
  (training randomness and test-set sampling); `pseudo_values` turns accuracy and per-class F1 into per-image
  contributions it can decompose; `decide` tests a gain against a margin; `winner` reads an interval.

Vectorised: a resample is a vector of counts per image (multinomial), so per-class true positives,
predicted and true counts of all resamples are three matrix products.
"""

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.stats import binomtest

from . import NUM_CLASSES

NO_WINNER = "no significant difference"


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: b images A gets right and B wrong, c the reverse; the two-sided exact binomial
    p-value of "equally accurate" (1 when b + c = 0)."""
    b: int
    c: int
    p_value: float


def mcnemar_exact(y_true, pred_a, pred_b) -> McNemar:
    right_a, right_b = np.asarray(pred_a) == np.asarray(y_true), np.asarray(pred_b) == np.asarray(y_true)
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p_value = binomtest(b, b + c, 0.5, alternative="two-sided").pvalue if b + c else 1.0
    return McNemar(b, c, float(p_value))


def _scores(tp, predicted, actual):
    """Per-class precision, recall and F1 from counts (any leading shape), 0 where undefined (as sklearn's
    zero_division=0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(predicted + actual > 0, 2 * tp / (predicted + actual), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1}


def winner(lower: float, upper: float, contender: str, baseline: str) -> str:
    """Which model an interval of a difference (contender - baseline) favours: its name, or NO_WINNER."""
    return contender if lower > 0 else baseline if upper < 0 else NO_WINNER


def scores(y_true, y_pred) -> dict:
    """Accuracy, macro F1 and per-class precision, recall and F1 (arrays in class order) of one set of
    predictions."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {key: value[0] for key, value in _model_scores(np.ones((1, len(y_true))), y_true, y_pred).items()}


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


def _tolist(value):
    return value.tolist() if isinstance(value, np.ndarray) else float(value)


# ------------------------------------------------------------------ both sources: seeds x test images

@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and test images with its standard error from both sources of noise.

    `values` of `two_way` are k seeds x n images (per image: a correctness difference, or a metric's
    per-image contribution, see `pseudo_values`). A two-way random-effects model without replication,
    value = mean + seed effect + image effect + interaction, gives the mean squares MS_seed, MS_image and
    MS_error; the variance of the grand mean is (MS_seed + MS_image - MS_error) / (k n), which counts the
    seed x image interaction once (it is in both MS_seed and MS_image), with Satterthwaite's degrees of
    freedom. The seeds-only and images-only parts are reported beside it (each holds the interaction).
    One seed (k = 1): the images only, df = n - 1."""

    mean: float
    se: float
    df: float
    k: int
    n: int
    se_seeds: float  # sqrt(MS_seed / (k n)): what the spread between seeds alone says (training randomness)
    se_images: float  # sqrt(MS_image / (k n)): what the spread between test images alone says (test-set sampling)
    se_interaction: float  # sqrt(MS_error / (k n)): counted in both of the above, once in `se`

    def interval(self, confidence: float) -> tuple[float, float]:
        half = stats.t.ppf((1 + confidence) / 2, self.df) * self.se
        return float(self.mean - half), float(self.mean + half)

    def one_sided(self, alpha: float) -> tuple:
        """The one-sided (1 - alpha) lower and upper bounds."""
        half = stats.t.ppf(1 - alpha, self.df) * self.se
        return self.mean - half, self.mean + half

    def p_value(self, null=0.0) -> float:
        """Two-sided p-value of "the true mean is `null`"."""
        if self.se == 0:
            return float(self.mean == null)
        return float(2 * stats.t.sf(abs(self.mean - null) / self.se, self.df))

    def components(self) -> dict:
        """Each source's variance of the mean, estimated: {"seeds", "images", "interaction"} (>= 0)."""
        ms_seed, ms_image, ms_error = (self.k * self.n * se ** 2 for se in (self.se_seeds, self.se_images,
                                                                            self.se_interaction))
        return {"seeds": max(0.0, ms_seed - ms_error) / (self.k * self.n) if self.k > 1 else 0.0,
                "images": max(0.0, ms_image - ms_error) / (self.k * self.n) if self.k > 1 else ms_image / self.n,
                "interaction": ms_error / (self.k * self.n) if self.k > 1 else 0.0}


def two_way(values) -> Estimate:
    """The grand mean of `values` (k seeds x n images) and its standard error from both sources (Estimate)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[None, :]
    k, n = values.shape
    mean = float(values.mean())
    if k == 1:
        se = float(values.std(ddof=1) / np.sqrt(n))
        return Estimate(mean, se, float(n - 1), 1, n, 0.0, se, 0.0)
    seed_means, image_means = values.mean(axis=1), values.mean(axis=0)
    ms_seed = n * ((seed_means - mean) ** 2).sum() / (k - 1)
    ms_image = k * ((image_means - mean) ** 2).sum() / (n - 1)
    residual = values - seed_means[:, None] - image_means[None, :] + mean
    ms_error = (residual ** 2).sum() / ((k - 1) * (n - 1))
    # Satterthwaite's degrees of freedom for a combination of mean squares. The combination is negative only
    # when sampling puts MS_error above MS_seed + MS_image (no variance left to either source): then the larger
    # of the two, with its own degrees of freedom.
    combined = ms_seed + ms_image - ms_error
    if combined > 0:
        df = combined ** 2 / (ms_seed ** 2 / (k - 1) + ms_image ** 2 / (n - 1) + ms_error ** 2 / ((k - 1) * (n - 1)))
    else:
        combined, df = max(ms_seed, ms_image), k - 1 if ms_seed >= ms_image else n - 1
    scale = k * n
    return Estimate(mean, float(np.sqrt(combined / scale)), float(df), k, n, float(np.sqrt(ms_seed / scale)),
                    float(np.sqrt(ms_image / scale)), float(np.sqrt(ms_error / scale)))


def pseudo_values(y_true, y_pred) -> dict:
    """Per-image contributions whose mean over the images is the metric: for accuracy, the image's
    correctness (0/1); for each class's F1 = 2 TP / (predicted + actual), the metric plus its linearised
    influence (delta method), F1 + n (2 tp_i - F1 (predicted_i + actual_i)) / (predicted + actual), which
    varies with the image as F1 would under resampling of the test set. {"accuracy": n, "f1": classes x n}."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n, classes = len(y_true), np.arange(NUM_CLASSES)[:, None]
    actual, predicted = (y_true[None, :] == classes), (y_pred[None, :] == classes)
    tp, counted = (actual & predicted).astype(np.float64), actual.astype(np.float64) + predicted
    totals = counted.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(totals > 0, 2 * tp.sum(axis=1, keepdims=True) / totals, 0.0)
        influence = np.where(totals > 0, n * (2 * tp - f1 * counted) / totals, 0.0)
    return {"accuracy": (y_true == y_pred).astype(np.float64), "f1": f1 + influence}


@dataclass(frozen=True)
class Verdict:
    """The gain tested against the margin it must reach (two one-sided tests at the margin, as in equivalence
    testing). Its fields, first in the verdict of metrics/compare.json and metrics/study.json (results.py;
    docs/method.md):

    decision: "worth it" when the one-sided (1 - alpha) lower bound is at least `margin`, "not worth it" when
        the one-sided upper bound is below it, else "undecided"
    deciding_bound: "lower", "upper" or None (undecided)
    lower, upper: the one-sided (1 - alpha) bounds of the gain
    margin, alpha: the rule's settings (params.yaml `compare.min_accuracy_gain`, `compare.alpha`)
    p_gain_at_least_margin: the t model's probability of a true gain at least the margin given the estimate
        (flat prior); also the p-value of H0 "gain >= margin", below alpha exactly when "not worth it"
    p_null_gain_at_most_margin: the p-value of H0 "gain <= margin", below alpha exactly when "worth it"
    family: the contenders judged against the same baseline at once; with more than one, each decision is Holm's
        step-down across them (decide_each), for "worth it" and for "not worth it" alike; the bounds stay at alpha
    """

    decision: str
    deciding_bound: str | None
    lower: float
    upper: float
    margin: float
    alpha: float
    p_gain_at_least_margin: float
    p_null_gain_at_most_margin: float
    family: int

    def bounds_sentence(self) -> str:
        """How the bounds meet the margin, in words: "its one-sided 95% upper bound, +0.84 points, stays below"."""
        one_sided = f"its one-sided {1 - self.alpha:.0%}"
        if self.deciding_bound == "lower":
            return f"{one_sided} lower bound, {100 * self.lower:+.2f} points, reaches"
        if self.deciding_bound == "upper":
            return f"{one_sided} upper bound, {100 * self.upper:+.2f} points, stays below"
        return f"{one_sided} bounds, {100 * self.lower:+.2f} to {100 * self.upper:+.2f} points, straddle"

    def holm_sentence(self) -> str:
        """'' for one contender; else how the decision was adjusted."""
        if self.family == 1:
            return ""
        return (f" With {self.family} contenders, the decision is Holm's across them (each one-sided test's p-value "
                f"adjusted: {self.p_null_gain_at_most_margin:.3g} unadjusted against the margin from below, "
                f"{self.p_gain_at_least_margin:.3g} from above).")


def decide(estimate: Estimate, margin: float, alpha: float) -> Verdict:
    """The Verdict on a gain `estimate` against `margin` at level `alpha`."""
    lower, upper = estimate.one_sided(alpha)
    if lower >= margin:
        decision, bound = "worth it", "lower"
    elif upper < margin:
        decision, bound = "not worth it", "upper"
    else:
        decision, bound = "undecided", None
    distance = (estimate.mean - margin) / estimate.se if estimate.se > 0 else np.sign(estimate.mean - margin) * np.inf
    return Verdict(decision, bound, float(lower), float(upper), margin, alpha,
                   float(stats.t.cdf(distance, estimate.df)), float(stats.t.sf(distance, estimate.df)), 1)


def decide_each(estimates: dict, margin: float, alpha: float) -> dict:
    """The Verdict of each contender's gain ({name: Estimate}) against the margin. One contender: `decide`. Several:
    Holm's step-down across them at family-wise level `alpha`, separately for "worth it" (H0: gain <= margin) and
    "not worth it" (H0: gain >= margin); a contender is decided only where its adjusted p-value is at most alpha
    (statsmodels' multipletests)."""
    from dataclasses import replace

    from statsmodels.stats.multitest import multipletests

    verdicts = {name: decide(estimate, margin, alpha) for name, estimate in estimates.items()}
    if len(verdicts) == 1:
        return verdicts
    names = list(verdicts)
    worth = multipletests([verdicts[n].p_null_gain_at_most_margin for n in names], alpha=alpha, method="holm")[0]
    not_worth = multipletests([verdicts[n].p_gain_at_least_margin for n in names], alpha=alpha, method="holm")[0]
    adjusted = {}
    for name, up, down in zip(names, worth, not_worth):
        decision, bound = ("worth it", "lower") if up else ("not worth it", "upper") if down else ("undecided", None)
        adjusted[name] = replace(verdicts[name], decision=decision, deciding_bound=bound, family=len(names))
    return adjusted
