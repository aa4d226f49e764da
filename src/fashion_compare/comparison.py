"""One run's answer to "is a contender worth its cost over the baseline on this data?", with its uncertainty.

Point estimates come from metrics/evaluate.json; intervals and tests from the per-image predictions of each
contender and the baseline on the same test images (see uncertainty.py). One run's intervals cover test-set
sampling only (the seed study adds training randomness). Each contender's verdict is the study's rule on this
run's test images: its gain tested against the margin (uncertainty.decide_each: Holm's across several
contenders). reports.py writes it in words and tables.
"""

from dataclasses import asdict

from . import CLASS_NAMES, PER_CLASS_METRICS
from .results import ClassComparison, Comparison, ComparisonVerdict, ContenderComparison, MetricComparison, ModelResult
from .uncertainty import NO_WINNER, decide_each, mcnemar_exact, paired_bootstrap, pseudo_values, two_way, winner


def _interval(summary: dict, index=None) -> tuple:
    pick = (lambda values: values[index]) if index is not None else (lambda value: value)
    return pick(summary["lower"]), pick(summary["upper"])


def model_result(train: dict, evaluation: dict, side: dict) -> ModelResult:
    """A model's quality with its bootstrap intervals (`side`: its half of a paired bootstrap), and its cost."""
    return ModelResult(
        test_accuracy=evaluation["accuracy"], test_accuracy_ci=_interval(side["accuracy"]),
        macro_f1=evaluation["macro_avg"]["f1"], macro_f1_ci=_interval(side["macro_f1"]),
        weighted_f1=evaluation["weighted_avg"]["f1"], parameter_count=train["parameter_count"],
        epochs=train["epochs"], train_seconds=train["train_seconds"],
        latency_ms_per_image=evaluation["latency_ms_per_image"],
        throughput_images_per_s=evaluation["throughput_images_per_s"])


def class_rows(evaluation: dict, boot: dict, contender: str, baseline: str) -> dict[str, ClassComparison]:
    """Per class and metric: both models' values, the difference, their intervals; the class's F1 winner."""
    per_class = {}
    for index, name in enumerate(CLASS_NAMES):
        metrics = {}
        for metric in PER_CLASS_METRICS:
            values = {m: evaluation[m]["per_class"][name][metric] for m in (contender, baseline)}
            metrics[metric] = MetricComparison(
                values, {contender: _interval(boot["a"][metric], index), baseline: _interval(boot["b"][metric], index)},
                values[contender] - values[baseline], _interval(boot["difference"][metric], index))
        f1 = metrics["f1"]
        per_class[name] = ClassComparison(**metrics, winner=winner(*f1.difference_ci, contender, baseline),
                                          f1_margin=abs(f1.difference))
    return per_class


def compare(train: dict, evaluation: dict, val_accuracy: dict, predictions: dict, settings, seed=0) -> Comparison:
    """`train[model]`: metrics/train/<model>.json; `evaluation`: metrics/evaluate.json; `val_accuracy[model]`:
    validation accuracy per epoch; `predictions`: {"label", <model>...} arrays in test-set order; `settings`:
    params.yaml's compare section (its baseline and contenders among them); `seed`: the bootstrap's (the same
    resamples for every contender)."""
    y_true, baseline = predictions["label"], settings.baseline
    boots = {c: paired_bootstrap(y_true, predictions[c], predictions[baseline], settings.bootstrap_samples,
                                 settings.confidence, seed) for c in settings.contenders}
    first = boots[settings.contenders[0]]
    models = {**{c: model_result(train[c], evaluation[c], boots[c]["a"]) for c in settings.contenders},
              baseline: model_result(train[baseline], evaluation[baseline], first["b"])}
    gains = {c: two_way(pseudo_values(y_true, predictions[c])["accuracy"] -
                        pseudo_values(y_true, predictions[baseline])["accuracy"])  # one seed: the test images only
             for c in settings.contenders}
    verdicts = decide_each(gains, settings.min_accuracy_gain, settings.alpha)
    contenders = {}
    for c in settings.contenders:
        per_class, gain, boot = class_rows(evaluation, boots[c], c, baseline), gains[c], boots[c]
        deep, small = models[c], models[baseline]
        common_epoch = min(len(val_accuracy[c]), len(val_accuracy[baseline]))
        verdict = ComparisonVerdict(
            **asdict(verdicts[c]),
            accuracy_gain=gain.mean, accuracy_gain_ci=gain.interval(settings.confidence), accuracy_gain_se=gain.se,
            interval_covers="test-set sampling only (one training run per model)",
            macro_f1_gain=deep.macro_f1 - small.macro_f1, macro_f1_gain_ci=_interval(boot["difference"]["macro_f1"]),
            mcnemar=mcnemar_exact(y_true, predictions[c], predictions[baseline]),
            train_time_ratio=deep.train_seconds / small.train_seconds,
            parameter_ratio=deep.parameter_count / small.parameter_count,
            latency_ratio=deep.latency_ms_per_image / small.latency_ms_per_image,
            classes_won={m: sum(row.winner == m for row in per_class.values()) for m in (c, baseline, NO_WINNER)},
            common_epoch=common_epoch,
            val_accuracy_at_common_epoch={m: val_accuracy[m][common_epoch - 1] for m in (c, baseline)},
            confidence=settings.confidence, bootstrap_samples=settings.bootstrap_samples)
        contenders[c] = ContenderComparison(per_class, verdict)
    return Comparison(baseline, models, contenders)


def headline(comparison: Comparison) -> dict:
    """The few numbers `dvc exp show` should put in columns (metrics/headline.json): each model's quality; per
    contender the gain with its interval, McNemar's p-value, P(gain >= margin) and the decision; nothing that
    depends on the machine or its load."""
    gains = {}
    for name, contender in comparison.contenders.items():
        verdict = contender.verdict
        lower, upper = verdict.accuracy_gain_ci
        gains[name] = {"accuracy_gain": verdict.accuracy_gain, "accuracy_gain_lower": lower,
                       "accuracy_gain_upper": upper, "mcnemar_p": verdict.mcnemar.p_value,
                       "p_gain_at_least_margin": verdict.p_gain_at_least_margin, "decision": verdict.decision}
    return {"baseline": comparison.baseline,
            "models": {model: {"test_accuracy": values.test_accuracy, "macro_f1": values.macro_f1}
                       for model, values in comparison.models.items()},
            "contenders": gains}


def cost(comparison: Comparison) -> dict:
    """What each model costs on the machine that ran the pipeline (metrics/cost.json, apart from the headline);
    each contender's ratios to the baseline."""
    return {"models": {model: {"train_seconds": values.train_seconds,
                               "latency_ms_per_image": values.latency_ms_per_image,
                               "throughput_images_per_s": values.throughput_images_per_s}
                       for model, values in comparison.models.items()},
            "contenders": {name: {"train_time_ratio": c.verdict.train_time_ratio,
                                        "latency_ratio": c.verdict.latency_ratio}
                                 for name, c in comparison.contenders.items()}}
