"""The answers in words, tables and plot rows: what comparison.py and study.py compute, as SUMMARY.md, the
README's tables and the DVC plot files show it. Each function takes the result and `titles` ({model name: its
title}, params.yaml's `models.<name>.title`); a result with several contenders gets a section per contender,
each against the baseline.
"""

from .results import Comparison, ContenderComparison, ContenderStudy, StudyResult
from .uncertainty import NO_WINNER, winner


def _title(titles: dict, key: str) -> str:
    return titles.get(key, key)


def _ci(interval, scale=1.0, digits=4) -> str:
    return f"[{interval[0] * scale:.{digits}f}, {interval[1] * scale:.{digits}f}]"


def _pp(value) -> str:
    return f"{100 * value:+.2f}"


def _points(interval) -> str:
    return f"[{_pp(interval[0])}, {_pp(interval[1])}]"


# ------------------------------------------------------------------ one run: plots/compare/

def per_class_rows(comparison: Comparison, metric: str, titles: dict) -> list:
    """DVC plot data: a row per model x class with the value and its confidence interval (each contender's from
    its pair with the baseline; the baseline's from its pair with the first contender)."""
    rows, first = [], next(iter(comparison.contenders.values()))
    for model in comparison.models:
        source = comparison.contenders.get(model, first)
        for name, entry in source.per_class.items():
            values = getattr(entry, metric)
            lower, upper = values.intervals[model]
            rows.append({"model": _title(titles, model), "class": name, "value": values.values[model],
                         "lower": lower, "upper": upper})
    return rows


def f1_difference_rows(contender: ContenderComparison, titles: dict) -> list:
    """DVC plot data for the forest plot: per class, a contender's F1 minus the baseline's, and its interval."""
    return [{"class": name, "difference": entry.f1.difference, "lower": entry.f1.difference_ci[0],
             "upper": entry.f1.difference_ci[1], "winner": _title(titles, entry.winner)}
            for name, entry in contender.per_class.items()]


def comparison_tables(comparison: Comparison, titles: dict) -> list:
    """One run's model table and, per contender, its per-class table: markdown lines."""
    level = f"{next(iter(comparison.contenders.values())).verdict.confidence:.0%}"
    lines = [f"| model | test accuracy ({level} CI) | macro F1 ({level} CI) | parameters | epochs | training time "
             "| latency / image |",
             "|---|---|---|---|---|---|---|"]
    for key, m in comparison.models.items():
        lines.append(f"| {_title(titles, key)} | {m.test_accuracy:.4f} {_ci(m.test_accuracy_ci)} | {m.macro_f1:.4f} "
                     f"{_ci(m.macro_f1_ci)} | {m.parameter_count:,} | {m.epochs} | "
                     f"{m.train_seconds / 60:.1f} min | {m.latency_ms_per_image:.2f} ms |")
    small = _title(titles, comparison.baseline)
    for name, contender in comparison.contenders.items():
        deep = _title(titles, name)
        lines += ["", f"| class | F1 {deep} | F1 {small} | difference ({level} CI) | winner |", "|---|---|---|---|---|"]
        for class_name, entry in contender.per_class.items():
            lines.append(f"| {class_name} | {entry.f1.values[name]:.4f} | {entry.f1.values[comparison.baseline]:.4f} | "
                         f"{entry.f1.difference:+.4f} {_ci(entry.f1.difference_ci)} | "
                         f"{_title(titles, entry.winner)} |")
    return lines


def comparison_verdicts(comparison: Comparison, titles: dict) -> list:
    """Each contender's verdict on this run, in words: markdown lines."""
    lines, baseline = [], comparison.baseline
    small = _title(titles, baseline)
    for name, contender in comparison.contenders.items():
        deep, verdict = _title(titles, name), contender.verdict
        level, test, won = f"{verdict.confidence:.0%}", verdict.mcnemar, verdict.classes_won
        if len(comparison.contenders) > 1:
            lines += [f"### {deep} against {small}", ""]
        lines += [
            f"{deep} is {100 * verdict.accuracy_gain:+.2f} percentage points of test accuracy ({level} CI "
            f"{_ci(verdict.accuracy_gain_ci, 100, 2)} points; macro F1 {verdict.macro_f1_gain:+.4f}, "
            f"CI {_ci(verdict.macro_f1_gain_ci)}) against {small}, for {verdict.train_time_ratio:.1f}x the "
            f"training time, {verdict.parameter_ratio:.1f}x the parameters and {verdict.latency_ratio:.1f}x "
            f"the latency per image. By F1, {deep} wins {won[name]} classes and {small} {won[baseline]}; "
            f"{won[NO_WINNER]} show no significant difference (a class is won only when the CI "
            "of its F1 difference excludes 0).", "",
            f"McNemar's exact test on the {test.b + test.c} test images exactly one model gets right: "
            f"{test.b} go to {deep}, {test.c} to {small}; p = {test.p_value:.3g} (reported; the verdict "
            "is the test against the margin below).", "",
            f"Trained for {comparison.models[name].epochs} and {comparison.models[baseline].epochs} epochs "
            f"respectively. At equal training (epoch {verdict.common_epoch}) validation accuracy is "
            f"{verdict.val_accuracy_at_common_epoch[name]:.4f} for {deep} and "
            f"{verdict.val_accuracy_at_common_epoch[baseline]:.4f} for {small}.", "",
            f"Is {deep} worth its cost over {small} on this data, by this one run? **{verdict.decision}**: tested "
            f"against the margin of {100 * verdict.margin:.2f} points (params.yaml `compare.min_accuracy_gain`), "
            f"{verdict.bounds_sentence()} the margin (alpha {verdict.alpha}).{verdict.holm_sentence()} This run's "
            f"interval covers {verdict.interval_covers}; the seed study (`make study`) adds training randomness.", ""]
    return lines


def comparison_summary(comparison: Comparison, titles: dict) -> str:
    """plots/compare/SUMMARY.md: the tables of one run, then each contender's verdict in words."""
    first = next(iter(comparison.contenders.values())).verdict
    names = " and ".join(_title(titles, name) for name in comparison.contenders)
    lines = [f"# {names} against {_title(titles, comparison.baseline)} on Fashion-MNIST", "",
             "Generated by the `compare` stage from `metrics/` and the per-image test predictions; do not edit "
             f"by hand. Intervals are {first.confidence:.0%} paired bootstrap intervals ({first.bootstrap_samples} "
             "resamples of the test images).", "", *comparison_tables(comparison, titles)]
    return "\n".join(lines + ["", "## Verdict", "", *comparison_verdicts(comparison, titles)])


# ------------------------------------------------------------------ a seed study: plots/study*/

PLOT_TABLES = ("accuracy_per_seed.csv", "gain_per_seed.csv", "noise_sources.csv", "f1_difference.csv")


def plot_rows(study: StudyResult, titles: dict):
    """DVC plot data: (file name, rows, fields) for plots/study/, one per PLOT_TABLES; with several contenders
    each row of a gain or a class names its contender."""
    several = len(study.contenders) > 1
    label = lambda text, name: f"{text}, {_title(titles, name)}" if several else text  # noqa: E731
    accuracy = []
    for model, entry in study.models.items():
        estimate = entry.test_accuracy
        accuracy += [{"model": _title(titles, model), "seed": row.seed, "test_accuracy": row.test_accuracy[model],
                      "mean": estimate.mean, "mean_lower": estimate.ci[0], "mean_upper": estimate.ci[1]}
                     for row in study.per_seed]
    gains, components, classes = [], [], []
    for name, contender in study.contenders.items():
        margin, gain = contender.verdict.margin, contender.accuracy_gain
        verdict_winner = lambda interval, name=name: _title(titles, winner(*interval, name, study.baseline))  # noqa: E731
        gains += [{"run": label(f"seed {row.seed}", name), "gain": row.contenders[name].accuracy_gain,
                   "lower": row.contenders[name].accuracy_gain_ci[0], "upper": row.contenders[name].accuracy_gain_ci[1],
                   "winner": verdict_winner(row.contenders[name].accuracy_gain_ci), "margin": margin}
                  for row in study.per_seed]
        gains.append({"run": label(f"mean of {study.k} seeds", name), "gain": gain.mean, "lower": gain.ci[0],
                      "upper": gain.ci[1], "winner": verdict_winner(gain.ci), "margin": margin})
        components += [{"source": label(source, name), "se_points": 100 * se} for source, se in (
            ("seeds (training randomness)", gain.se_seeds), ("test images (test-set sampling)", gain.se_images),
            ("seed x image interaction (in both above)", gain.se_interaction), ("both sources, combined", gain.se))]
        classes += [{"class": label(class_name, name), "difference": entry.f1_difference_mean,
                     "lower": entry.f1_difference_adjusted_ci[0], "upper": entry.f1_difference_adjusted_ci[1],
                     "winner": _title(titles, entry.winner), "holm_p_value": entry.holm_p_value}
                    for class_name, entry in contender.per_class.items()]
    return list(zip(PLOT_TABLES, (accuracy, gains, components, classes), (
        ["model", "seed", "test_accuracy", "mean", "mean_lower", "mean_upper"],
        ["run", "gain", "lower", "upper", "winner", "margin"], ["source", "se_points"],
        ["class", "difference", "lower", "upper", "winner", "holm_p_value"])))


def study_tables(study: StudyResult, titles: dict) -> list:
    """The study's tables (models; per contender its standard errors, seeds and classes), markdown lines."""
    first = next(iter(study.contenders.values())).verdict
    level, one_sided = f"{first.confidence:.0%}", f"{1 - first.alpha:.0%}"
    small = _title(titles, study.baseline)
    lines = [f"| model | test accuracy, mean ({level} interval, both sources) | sd over seeds | min | max | "
             "macro F1, mean |", "|---|---|---|---|---|---|"]
    for model, entry in study.models.items():
        acc, f1 = entry.test_accuracy, entry.macro_f1
        lines.append(f"| {_title(titles, model)} | {acc.mean:.4f} [{acc.ci[0]:.4f}, {acc.ci[1]:.4f}] | {acc.sd:.4f} | "
                     f"{acc.min:.4f} | {acc.max:.4f} | {f1.mean:.4f} |")
    for name, contender in study.contenders.items():
        deep, gain = _title(titles, name), contender.accuracy_gain
        lines += ["", f"| accuracy gain of {deep}, points | standard error, points |" if len(study.contenders) > 1
                  else "| accuracy gain, points | standard error, points |", "|---|---|",
                  f"| seeds alone (training randomness) | {100 * gain.se_seeds:.3f} |",
                  f"| test images alone (test-set sampling) | {100 * gain.se_images:.3f} |",
                  f"| seed x image interaction (in both rows above) | {100 * gain.se_interaction:.3f} |",
                  f"| both sources, interaction once (df {gain.df:.1f}) | {100 * gain.se:.3f} |"]
        lines += ["", f"| seed | {deep} | {small} | gain, points (one-sided {one_sided} bounds over its test images) | "
                  "McNemar p | single run says |", "|---|---|---|---|---|---|"]
        for row in study.per_seed:
            seed_gain = row.contenders[name]
            lines.append(f"| {row.seed} | {row.test_accuracy[name]:.4f} | {row.test_accuracy[study.baseline]:.4f} | "
                         f"{_pp(seed_gain.accuracy_gain)} {_points(seed_gain.accuracy_gain_one_sided)} | "
                         f"{seed_gain.mcnemar_p:.3g} | {seed_gain.single_run_decision} |")
        lines += ["", f"| class | mean F1 difference{f' of {deep}' if len(study.contenders) > 1 else ''} ({level} "
                  "interval) | Holm-adjusted p | winner |", "|---|---|---|---|"]
        for class_name, entry in contender.per_class.items():
            lower, upper = entry.f1_difference_ci
            lines.append(f"| {class_name} | {entry.f1_difference_mean:+.4f} [{lower:+.4f}, {upper:+.4f}] | "
                         f"{entry.holm_p_value:.3g} | {_title(titles, entry.winner)} |")
    return lines


def _contender_paragraphs(study: StudyResult, name: str, contender: ContenderStudy, titles: dict) -> list:
    deep, small = _title(titles, name), _title(titles, study.baseline)
    verdict, gain, superiority, cost = contender.verdict, contender.accuracy_gain, contender.p_better, \
        contender.train_time_ratio
    level = f"{verdict.confidence:.0%}"
    lines = [f"Over {study.k} seeds, {deep}'s test accuracy gain over {small} is {_pp(gain.mean)} points "
             f"({level} interval {_points(gain.ci)}, both sources; seeds only {_points(gain.seeds_only_ci)}; "
             f"per seed from {_pp(gain.min)} to {_pp(gain.max)})"
             + (f", for {cost.median:.1f}x its training time (median over seeds; {cost.min:.1f}-"
                f"{cost.max:.1f}x)" if cost else "") + ". P(gain >= margin) = "
             f"{verdict.p_gain_at_least_margin:.2g}. P({deep} > {small}) = {superiority.value:.2f}, the share "
             f"of seeds won (exact {level} interval [{superiority.exact_ci[0]:.2f}, "
             f"{superiority.exact_ci[1]:.2f}]); Almost Stochastic Order eps_min = {contender.aso_epsilon_min:.2f} "
             f"(below 0.5: {deep} tends to dominate; reported, not part of the verdict).", "",
             f"Is {deep} worth its cost over {small} on this data? **{verdict.decision}**: tested against the margin "
             f"of {100 * verdict.margin:.2f} points (params.yaml `compare.min_accuracy_gain`), "
             f"{verdict.bounds_sentence()} the margin (alpha {verdict.alpha}).{verdict.holm_sentence()}", "",
             f"{verdict.single_runs_saying_otherwise} of the {study.k} single runs, judged alone by the same "
             "rule on their test images, would have said otherwise."]
    if contender.per_cpu_kind:
        lines += ["", "Seeds ran on more than one CPU kind (each rounds differently): " + "; ".join(
            f"{label}: seeds {', '.join(map(str, entry.seeds))}, mean gain {_pp(entry.accuracy_gain_mean)}"
            for label, entry in contender.per_cpu_kind.items()) + "."]
    if verdict.plan:
        planned = verdict.plan
        lines += ["", f"Plan: {planned.planned_k or 'no number of'} seeds would clear the margin with "
                  f"{planned.power:.0%} probability if the estimates hold (the test-set part alone: standard "
                  f"error {100 * planned.test_set_floor_se:.2f} points)."]
    return lines


def study_verdicts(study: StudyResult, titles: dict) -> list:
    """Each contender's verdict over the seeds, in words: markdown lines."""
    lines = []
    for name, contender in study.contenders.items():
        if len(study.contenders) > 1:
            lines += [f"### {_title(titles, name)} against {_title(titles, study.baseline)}", ""]
        lines += [*_contender_paragraphs(study, name, contender, titles), ""]
    if study.failed_seeds:
        lines += ["Left out, failed: " + "; ".join(f"seed {s}: {why}" for s, why in study.failed_seeds.items()), ""]
    return lines[:-1]


def study_summary(study: StudyResult, titles: dict) -> str:
    """plots/study/SUMMARY.md: the study's tables, then each contender's verdict in words."""
    names = " and ".join(_title(titles, name) for name in study.contenders)
    lines = [f"# Seed study: {names} against {_title(titles, study.baseline)} on Fashion-MNIST", "",
             f"Generated by `make study` from the per-image test predictions of {study.k} paired runs "
             f"(seeds {', '.join(map(str, study.seeds))}); do not edit by hand. Intervals cover training "
             "randomness and test-set sampling (seed x image variance decomposition, Satterthwaite df) unless "
             "they say otherwise.", "", *study_tables(study, titles), "", "## Verdict", "",
             *study_verdicts(study, titles)]
    return "\n".join(lines) + "\n"


def answer_table(studies: dict, titles: dict) -> str:
    """The README's answer table: a row per recipe and contender ({recipe title: its StudyResult, or a string
    saying why there is none yet}): both models' accuracy, the gain with its interval, the bound that decides, the
    verdict and the training-cost ratio (the median over seeds, with its range)."""
    ran = [study for study in studies.values() if isinstance(study, StudyResult)]
    first = next(iter(ran[0].contenders.values())).verdict if ran else None
    level = f"{first.confidence:.0%}" if first else "95%"
    one_sided = f"{1 - first.alpha:.0%}" if first else "95%"
    lines = [f"| recipe | contender | its accuracy | baseline | its accuracy | gain, points [{level} interval] | "
             f"one-sided {one_sided} bound | verdict | training time, contender ÷ baseline (median over seeds) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for recipe, study in studies.items():
        if not isinstance(study, StudyResult):
            lines.append(f"| {recipe} | {study} | | | | | | | |")
            continue
        for name, contender in study.contenders.items():
            verdict, gain, cost = contender.verdict, contender.accuracy_gain, contender.train_time_ratio
            bound = {"lower": f"lower {_pp(verdict.lower)}", "upper": f"upper {_pp(verdict.upper)}"}.get(
                verdict.deciding_bound, f"{_pp(verdict.lower)} to {_pp(verdict.upper)}")
            cost_text = f"{cost.median:.1f}× ({cost.min:.1f}–{cost.max:.1f}×)" if cost else "not recorded"
            lines.append(f"| {recipe} | {_title(titles, name)} | {study.models[name].test_accuracy.mean:.4f} | "
                         f"{_title(titles, study.baseline)} | {study.models[study.baseline].test_accuracy.mean:.4f} | "
                         f"{_pp(gain.mean)} {_points(gain.ci)} | {bound} | {verdict.decision} (k = {study.k}) | "
                         f"{cost_text} |")
    return "\n".join(lines)

