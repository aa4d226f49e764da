"""One run's answer to "is the deep model worth its cost on this data?", with its uncertainty.

Point estimates come from metrics/evaluate.json; intervals and tests from the per-image predictions of both
models on the same test images (see uncertainty.py). One run's intervals cover test-set sampling only (the
seed study adds training randomness). The verdict is the study's rule on this run's test images: the gain
tested against the margin (uncertainty.decide).
"""

from dataclasses import asdict

from . import CLASS_NAMES, MODEL_TITLES, PER_CLASS_METRICS
from .results import ClassComparison, Comparison, ComparisonVerdict, MetricComparison, ModelResult, PairIntervals
from .uncertainty import DEEP, NO_WINNER, SMALL, decide, mcnemar_exact, paired_bootstrap, pseudo_values, two_way, winner


def _interval(summary: dict, index=None) -> tuple:
    pick = (lambda values: values[index]) if index is not None else (lambda value: value)
    return pick(summary["lower"]), pick(summary["upper"])


def model_rows(train: dict, evaluation: dict, side: dict) -> dict[str, ModelResult]:
    """Each model's quality with its bootstrap intervals, and its cost."""
    return {model: ModelResult(
        test_accuracy=evaluation[model]["accuracy"], test_accuracy_ci=_interval(side[model]["accuracy"]),
        macro_f1=evaluation[model]["macro_avg"]["f1"], macro_f1_ci=_interval(side[model]["macro_f1"]),
        weighted_f1=evaluation[model]["weighted_avg"]["f1"], parameter_count=train[model]["parameter_count"],
        epochs=train[model]["epochs"], train_seconds=train[model]["train_seconds"],
        latency_ms_per_image=evaluation[model]["latency_ms_per_image"],
        throughput_images_per_s=evaluation[model]["throughput_images_per_s"]) for model in (DEEP, SMALL)}


def class_rows(evaluation: dict, boot: dict) -> dict[str, ClassComparison]:
    """Per class and metric: both models' values, the difference, their intervals; the class's F1 winner."""
    per_class = {}
    for index, name in enumerate(CLASS_NAMES):
        metrics = {}
        for metric in PER_CLASS_METRICS:
            deep, small = (evaluation[m]["per_class"][name][metric] for m in (DEEP, SMALL))
            metrics[metric] = MetricComparison(deep, small, deep - small, PairIntervals(
                _interval(boot["a"][metric], index), _interval(boot["b"][metric], index),
                _interval(boot["difference"][metric], index)))
        f1 = metrics["f1"]
        per_class[name] = ClassComparison(**metrics, winner=winner(*f1.interval("difference")),
                                          f1_margin=abs(f1.difference))
    return per_class


def compare(train: dict, evaluation: dict, val_accuracy: dict, predictions: dict, settings, seed=0) -> Comparison:
    """`train[model]`: metrics/train_<model>.json; `evaluation`: metrics/evaluate.json;
    `val_accuracy[model]`: validation accuracy per epoch; `predictions`: {"label", DEEP, SMALL} arrays
    in test-set order; `settings`: params.yaml's compare section; `seed`: the bootstrap's."""
    y_true = predictions["label"]
    boot = paired_bootstrap(y_true, predictions[DEEP], predictions[SMALL], settings.bootstrap_samples,
                            settings.confidence, seed)
    models = model_rows(train, evaluation, {DEEP: boot["a"], SMALL: boot["b"]})
    per_class = class_rows(evaluation, boot)
    deep, small = models[DEEP], models[SMALL]
    gain = two_way(pseudo_values(y_true, predictions[DEEP])["accuracy"] -
                   pseudo_values(y_true, predictions[SMALL])["accuracy"])  # one seed: the test images only
    common_epoch = min(len(val_accuracy[DEEP]), len(val_accuracy[SMALL]))
    verdict = ComparisonVerdict(
        **asdict(decide(gain, settings.min_accuracy_gain, settings.alpha)),
        accuracy_gain=gain.mean, accuracy_gain_ci=gain.interval(settings.confidence), accuracy_gain_se=gain.se,
        interval_covers="test-set sampling only (one training run per model)",
        macro_f1_gain=deep.macro_f1 - small.macro_f1, macro_f1_gain_ci=_interval(boot["difference"]["macro_f1"]),
        mcnemar=mcnemar_exact(y_true, predictions[DEEP], predictions[SMALL]),
        train_time_ratio=deep.train_seconds / small.train_seconds,
        parameter_ratio=deep.parameter_count / small.parameter_count,
        latency_ratio=deep.latency_ms_per_image / small.latency_ms_per_image,
        classes_won={m: sum(c.winner == m for c in per_class.values()) for m in (DEEP, SMALL, NO_WINNER)},
        common_epoch=common_epoch,
        val_accuracy_at_common_epoch={m: val_accuracy[m][common_epoch - 1] for m in (DEEP, SMALL)},
        confidence=settings.confidence, bootstrap_samples=settings.bootstrap_samples)
    return Comparison(models, per_class, verdict)


def headline(comparison: Comparison) -> dict:
    """The few numbers `dvc exp show` should put in columns (metrics/headline.json): quality, the gain with its
    interval, McNemar's p-value, P(gain >= margin) and the decision; nothing that depends on the machine or its
    load."""
    verdict = comparison.verdict
    lower, upper = verdict.accuracy_gain_ci
    return {**{model: {"test_accuracy": values.test_accuracy, "macro_f1": values.macro_f1}
               for model, values in comparison.models.items()},
            "accuracy_gain": verdict.accuracy_gain, "accuracy_gain_lower": lower, "accuracy_gain_upper": upper,
            "mcnemar_p": verdict.mcnemar.p_value, "p_gain_at_least_margin": verdict.p_gain_at_least_margin,
            "decision": verdict.decision}


def cost(comparison: Comparison) -> dict:
    """What each model costs on the machine that ran the pipeline (metrics/cost.json, apart from the headline)."""
    return {**{model: {"train_seconds": values.train_seconds, "latency_ms_per_image": values.latency_ms_per_image,
                       "throughput_images_per_s": values.throughput_images_per_s}
               for model, values in comparison.models.items()},
            "train_time_ratio": comparison.verdict.train_time_ratio, "latency_ratio": comparison.verdict.latency_ratio}


def per_class_rows(comparison: Comparison, metric: str) -> list:
    """DVC plot data: a row per model x class with the value and its confidence interval."""
    rows = []
    for model in (DEEP, SMALL):
        for name, entry in comparison.per_class.items():
            lower, upper = entry.metric(metric).interval(model)
            rows.append({"model": MODEL_TITLES[model], "class": name, "value": entry.metric(metric).value(model),
                         "lower": lower, "upper": upper})
    return rows


def f1_difference_rows(comparison: Comparison) -> list:
    """DVC plot data for the forest plot: per class, F1(ResNet18) - F1(Small CNN) and its interval."""
    return [{"class": name, "difference": entry.f1.difference, "lower": entry.f1.ci.difference[0],
             "upper": entry.f1.ci.difference[1], "winner": MODEL_TITLES.get(entry.winner, entry.winner)}
            for name, entry in comparison.per_class.items()]


def _ci(interval, scale=1.0, digits=4) -> str:
    return f"[{interval[0] * scale:.{digits}f}, {interval[1] * scale:.{digits}f}]"


def one_run_summary(comparison: Comparison) -> str:
    """plots/compare/SUMMARY.md: the tables of one run, then its verdict in words."""
    verdict = comparison.verdict
    level = f"{verdict.confidence:.0%}"
    lines = ["# ResNet18 vs small CNN on Fashion-MNIST", "",
             "Generated by the `compare` stage from `metrics/` and the per-image test predictions; do not edit "
             f"by hand. Intervals are {level} paired bootstrap intervals ({verdict.bootstrap_samples} "
             "resamples of the test images).", "", *tables(comparison)]
    return "\n".join(lines + ["", "## Verdict", "", *_verdict_paragraphs(comparison.models, verdict, level)])


def tables(comparison: Comparison) -> list:
    """One run's model table and per-class table, markdown lines (a blank line between them)."""
    models, level = comparison.models, f"{comparison.verdict.confidence:.0%}"
    deep, small = MODEL_TITLES[DEEP], MODEL_TITLES[SMALL]
    lines = [f"| model | test accuracy ({level} CI) | macro F1 ({level} CI) | parameters | epochs | training time "
             "| latency / image |",
             "|---|---|---|---|---|---|---|"]
    for key, title in ((DEEP, deep), (SMALL, small)):
        m = models[key]
        lines.append(f"| {title} | {m.test_accuracy:.4f} {_ci(m.test_accuracy_ci)} | {m.macro_f1:.4f} "
                     f"{_ci(m.macro_f1_ci)} | {m.parameter_count:,} | {m.epochs} | "
                     f"{m.train_seconds / 60:.1f} min | {m.latency_ms_per_image:.2f} ms |")
    lines += ["", f"| class | F1 {deep} | F1 {small} | difference ({level} CI) | winner |", "|---|---|---|---|---|"]
    for name, entry in comparison.per_class.items():
        winner_title = MODEL_TITLES.get(entry.winner, entry.winner)
        lines.append(f"| {name} | {entry.f1.resnet:.4f} | {entry.f1.cnn:.4f} | "
                     f"{entry.f1.difference:+.4f} {_ci(entry.f1.ci.difference)} | {winner_title} |")
    return lines


def _verdict_paragraphs(models: dict, verdict: ComparisonVerdict, level: str) -> list:
    deep, small = MODEL_TITLES[DEEP], MODEL_TITLES[SMALL]
    test, won = verdict.mcnemar, verdict.classes_won
    return [f"{deep} is {100 * verdict.accuracy_gain:+.2f} percentage points of test accuracy ({level} CI "
            f"{_ci(verdict.accuracy_gain_ci, 100, 2)} points; macro F1 {verdict.macro_f1_gain:+.4f}, "
            f"CI {_ci(verdict.macro_f1_gain_ci)}) against {small}, for {verdict.train_time_ratio:.1f}x the "
            f"training time, {verdict.parameter_ratio:.1f}x the parameters and {verdict.latency_ratio:.1f}x "
            f"the latency per image. By F1, {deep} wins {won[DEEP]} classes and {small} {won[SMALL]}; "
            f"{won[NO_WINNER]} show no significant difference (a class is won only when the CI of its F1 "
            "difference excludes 0).", "",
            f"McNemar's exact test on the {test.b + test.c} test images exactly one model gets right: "
            f"{test.b} go to {deep}, {test.c} to {small}; p = {test.p_value:.3g} (reported; the verdict "
            "is the test against the margin below).", "",
            f"Trained for {models[DEEP].epochs} and {models[SMALL].epochs} epochs respectively. "
            f"At equal training (epoch {verdict.common_epoch}) validation accuracy is "
            f"{verdict.val_accuracy_at_common_epoch[DEEP]:.4f} for {deep} and "
            f"{verdict.val_accuracy_at_common_epoch[SMALL]:.4f} for {small}.", "",
            f"Is the deep model worth its cost on this data, by this one run? **{verdict.decision}**: tested "
            f"against the margin of {100 * verdict.margin:.2f} points (params.yaml `compare.min_accuracy_gain`), "
            f"{verdict.bounds_sentence()} the margin (alpha {verdict.alpha}). This run's interval covers "
            f"{verdict.interval_covers}; the seed study (`make study`) adds training randomness.", ""]
