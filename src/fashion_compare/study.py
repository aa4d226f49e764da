"""A seed study: is ResNet18 worth its cost over the CNN on this data, over k paired training runs?

One training run per model answers "do these two checkpoints differ on these 10,000 test images": its
interval covers test-set sampling only. Training randomness (initialisation, batch order, dropout, the
validation split) moves the answer too (Bouthillier et al., MLSys 2021). A study trains both models once per
seed, with everything else equal, and every number below covers both sources of noise: per image and seed,
the correctness difference (or a metric's per-image contribution) is decomposed over seeds x test images
(uncertainty.two_way: a two-way random-effects model, the interaction counted once, Satterthwaite's degrees
of freedom). What comes out:
- each model's test accuracy and the paired gain (ResNet18 - CNN): mean, interval, and the standard error
  each source gives alone; the seeds-only t-interval beside it, labelled as what it covers;
- the verdict against the margin (compare.min_accuracy_gain, compare.alpha): "worth it" when the one-sided
  (1 - alpha) lower bound of the gain reaches the margin, "not worth it" when the upper bound stays below it,
  else "undecided", with P(gain >= margin) and, when undecided, how many seeds would likely decide (`plan`);
- per class: the F1 difference with its interval, Holm-adjusted p-values across the classes (a class is won
  only after adjustment) and Bonferroni-adjusted intervals for the figure;
- P(ResNet18 > CNN), the share of seeds won, with its exact interval; Almost Stochastic Order's eps_min
  (Dror et al. 2019; deepsig) on the per-seed accuracies, reported beside the verdict, not part of it;
- each seed's own single-run verdict, by the same rule on its test images alone.
Everything is computed from each seed's per-image test predictions (numpy, scipy, statsmodels; seconds).
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from . import CLASS_NAMES, MODEL_NAMES, MODEL_TITLES
from .errors import PipelineError
from .results import (
    AccuracyEstimate,
    ClassDifference,
    CostRatio,
    CpuKindGain,
    GainEstimate,
    Plan,
    RunRecord,
    SeedResult,
    Spread,
    StudyModel,
    StudyResult,
    StudyVerdict,
    Superiority,
    VarianceComponents,
)
from .uncertainty import NO_WINNER, Estimate, decide, mcnemar_exact, pseudo_values, scores, two_way, winner

DEEP, SMALL = MODEL_NAMES
MIN_SEEDS = 2
MAX_PLANNED_SEEDS = 20  # the two-stage plan's cap: a study that needs more says so instead of running on
PLANNING_POWER = 0.8  # the chance, at the planned k, that the interval clears the margin if the estimate holds
ASO_SAMPLES = 1000  # deepsig's num_samples and num_bootstrap_iterations (its defaults)


class StudyError(PipelineError):
    pass


@dataclass(frozen=True)
class SeedRun:
    """One seed's finished pipeline run: its params, its test predictions (labels and each model's class), and
    its run record (None where none was kept: a made-up run)."""
    seed: int
    params: dict
    predictions: dict  # {"label": array, "resnet": array, "cnn": array}
    record: RunRecord | None = None


def flatten(params: dict, prefix="") -> dict:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# What may differ between a study's seeds: the seed; the thread count (the same results up to rounding);
# and what does not shape a seed's predictions: how long latency is measured, MLflow, the verdict rule and
# its statistics (the aggregate applies today's `compare` to every seed alike), the study's own settings.
IGNORED_PARAMS = {"seed", "threads", "evaluate.latency_repeats"}
IGNORED_SECTIONS = ("study.", "compare.", "tracking.", "tune.")


# The recipe knobs a model section gained after seeds were committed, with the values that trained as before:
# a section without them ran Adam, no augmentation, and StepLR exactly when it had a step_size.
RECIPE_DEFAULTS = {"weight_decay": 0.0, "augment": "none"}


def with_recipe_defaults(params: dict) -> dict:
    """`params` with each model section's recipe knobs spelled out, as params.yaml has them today."""
    params = {**params}
    for model in MODEL_NAMES:
        if isinstance(params.get(model), dict) and "schedule" not in params[model]:
            section = {**RECIPE_DEFAULTS, **params[model]}
            section["schedule"] = "step" if section.get("step_size") else "constant"
            params[model] = section
    return params


def comparable_params(params: dict) -> dict:
    """The params that must agree across a study's seeds: all but those that may differ (above), the recipe
    knobs spelled out (with_recipe_defaults)."""
    return {key: value for key, value in flatten(with_recipe_defaults(params)).items()
            if key not in IGNORED_PARAMS and not key.startswith(IGNORED_SECTIONS)}


def check_distinct(seeds, where="study.seeds"):
    """Refuse, in one line, a seed listed twice."""
    seeds = list(seeds)
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise StudyError(f"{where}: seed {', '.join(map(str, repeated))} appears more than once; a study's seeds "
                         "differ")


def check_runs(runs: list[SeedRun]):
    """Refuse, in one line, what is not a study: fewer than 2 seeds, a seed twice, runs whose params differ
    in anything but the seed (naming the params), or runs tested on different test sets."""
    seeds = [run.seed for run in runs]
    check_distinct(seeds, "the study's runs")
    if len(runs) < MIN_SEEDS:
        raise StudyError(f"a study needs at least {MIN_SEEDS} finished seeds, got {len(runs)} "
                         f"({', '.join(map(str, seeds)) or 'none'}); run more seeds (make study)")
    first = comparable_params(runs[0].params)
    for run in runs[1:]:
        other = comparable_params(run.params)
        differing = sorted(key for key in set(first) | set(other) if first.get(key) != other.get(key))
        if differing:
            raise StudyError(f"seeds {runs[0].seed} and {run.seed} ran with different params ({', '.join(differing)}); "
                             "a study varies the seed only: rerun those seeds with the same params.yaml")
        if not np.array_equal(run.predictions["label"], runs[0].predictions["label"]):
            raise StudyError(f"seeds {runs[0].seed} and {run.seed} were tested on different test sets")


def seeds_only_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The t-interval over seeds of per-seed values: training randomness only (every seed is scored on the
    same test images, so what they happen to favour never shows in the spread between seeds)."""
    k = len(values)
    half = stats.t.ppf((1 + confidence) / 2, k - 1) * values.std(ddof=1) / np.sqrt(k)
    return float(values.mean() - half), float(values.mean() + half)


def spread(values: np.ndarray) -> Spread:
    return Spread(float(values.mean()), float(values.std(ddof=1)), float(values.min()), float(values.max()))


def probability_of_superiority(gains: np.ndarray, confidence: float) -> Superiority:
    """P(ResNet18 > CNN): the share of seeds whose gain is positive, with the exact (Clopper-Pearson)
    interval of that share. A seed with a gain of exactly 0 is left out of both (the sign test's rule)."""
    wins, decided = int((gains > 0).sum()), int((gains != 0).sum())
    if decided == 0:
        return Superiority(0.5, (0.0, 1.0), 0, len(gains))
    exact = stats.binomtest(wins, decided).proportion_ci(confidence, method="exact")
    return Superiority(wins / decided, (float(exact.low), float(exact.high)), wins, len(gains) - decided)


def almost_stochastic_order(deep: np.ndarray, small: np.ndarray, confidence: float, seed: int) -> float | None:
    """deepsig's eps_min that ResNet18's accuracy distribution over seeds stochastically dominates the
    CNN's (0: always better, 0.5: no order, 1: always worse; Dror et al. 2019, Ulmer et al. 2022)."""
    import warnings

    from deepsig import aso

    with warnings.catch_warnings():  # "Division by zero encountered in violation ratio": distributions that never cross
        warnings.simplefilter("ignore", UserWarning)
        return float(aso(deep, small, confidence_level=confidence, num_samples=ASO_SAMPLES,
                         num_bootstrap_iterations=ASO_SAMPLES, show_progress=False, seed=seed))


def plan(gain: Estimate, margin: float, alpha: float, power=PLANNING_POWER, cap=MAX_PLANNED_SEEDS) -> Plan:
    """How many seeds would likely decide an undecided study (a two-stage plan: the seeds so far are the
    pilot; the planned k is run once, then decided, with no look in between).

    From the components measured so far, the variance of the mean gain at K seeds is
    var_seeds k / K + var_images + var_interaction k / K (the test set stays the same 10,000 images, so its
    part does not shrink). K is the smallest number of seeds at which |gain - margin| is at least
    (z(1 - alpha) + z(power)) standard errors: the interval then clears the margin with probability `power`
    if the estimated gain and components hold. When the test-set part alone is too wide, no K can."""
    components = gain.components()
    gap = abs(gain.mean - margin)
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)
    per_seed = (components["seeds"] + components["interaction"]) * gain.k  # variance of one seed's share
    floor = components["images"]
    if (gap / z) ** 2 <= floor:
        return Plan(power, cap, float(np.sqrt(floor)), None, False)
    needed = max(gain.k + 1, int(np.ceil(per_seed / ((gap / z) ** 2 - floor))))
    return Plan(power, cap, float(np.sqrt(floor)), needed, needed <= cap)


def per_seed_results(runs, accuracy, correct, settings) -> tuple[SeedResult, ...]:
    """Each seed's single run judged alone: its gain, that gain's interval and the one-sided bounds the rule
    uses, over its test images only, McNemar's test, the verdict the same rule gives on those images, and the
    run's record (CPU kind, training times, MLflow runs, as its run.json holds them)."""
    rows = []
    for index, run in enumerate(runs):
        single = two_way(correct[DEEP][index] - correct[SMALL][index])
        mcnemar = mcnemar_exact(run.predictions["label"], run.predictions[DEEP], run.predictions[SMALL])
        verdict = decide(single, settings.min_accuracy_gain, settings.alpha)
        rows.append(SeedResult(run.seed, float(accuracy[DEEP][index]), float(accuracy[SMALL][index]), single.mean,
                               single.interval(settings.confidence), (verdict.lower, verdict.upper),
                               mcnemar.p_value, verdict.decision, run.record))
    return tuple(rows)


def training_cost(runs) -> CostRatio | None:
    """ResNet18's training time over the small CNN's, per seed (from each seed's run.json): median and range
    (None when no seed recorded its times)."""
    ratios = [run.record.train_seconds[DEEP] / run.record.train_seconds[SMALL] for run in runs if run.record]
    if not ratios:
        return None
    return CostRatio(float(np.median(ratios)), float(min(ratios)), float(max(ratios)))


def class_differences(runs, settings) -> dict[str, ClassDifference]:
    """Per class, the F1 difference over seeds with its interval from both sources, its Holm-adjusted p-value
    across the classes (checked against statsmodels), and a Bonferroni-adjusted interval."""
    from statsmodels.stats.multitest import multipletests

    contributions = {m: np.stack([pseudo_values(run.predictions["label"], run.predictions[m])["f1"] for run in runs])
                     for m in MODEL_NAMES}  # seeds x classes x images
    estimates = [two_way(contributions[DEEP][:, c] - contributions[SMALL][:, c]) for c in range(len(CLASS_NAMES))]
    p_values = [estimate.p_value() for estimate in estimates]
    adjusted = multipletests(p_values, alpha=1 - settings.confidence, method="holm")[1]
    simultaneous = 1 - (1 - settings.confidence) / len(CLASS_NAMES)
    differences = {}
    for c, (name, estimate) in enumerate(zip(CLASS_NAMES, estimates)):
        significant = adjusted[c] < 1 - settings.confidence
        differences[name] = ClassDifference(
            estimate.mean, estimate.interval(settings.confidence), estimate.interval(simultaneous), estimate.se,
            p_values[c], float(adjusted[c]), (DEEP if estimate.mean > 0 else SMALL) if significant else NO_WINNER,
            *(float(contributions[m][:, c].mean()) for m in (DEEP, SMALL)))
    return differences


def per_cpu_kind(runs, gains) -> dict[str, CpuKindGain] | None:
    """The gain per CPU kind when the seeds ran on more than one (each kind rounds differently)."""
    kinds = {}
    for run, gain in zip(runs, gains):
        label = run.record.cpu_kind.label() if run.record else "unknown CPU"
        kinds.setdefault(label, []).append((run.seed, gain))
    if len(kinds) < 2:
        return None
    return {label: CpuKindGain(tuple(seed for seed, _ in rows), float(np.mean([g for _, g in rows])))
            for label, rows in sorted(kinds.items())}


def accuracy_estimate(correct: np.ndarray, confidence: float) -> AccuracyEstimate:
    """A model's test accuracy over seeds (`correct`: seeds x images, 0/1): spread and interval."""
    per_seed, estimate = spread(correct.mean(axis=1)), two_way(correct)
    return AccuracyEstimate(estimate.mean, per_seed.sd, per_seed.min, per_seed.max, estimate.interval(confidence),
                            estimate.se, estimate.df, estimate.se_seeds, estimate.se_images, estimate.se_interaction)


def gain_estimate(gain: Estimate, gains: np.ndarray, confidence: float) -> GainEstimate:
    """The gain over seeds and images (`gain`), with the per-seed gains' spread (`gains`)."""
    return GainEstimate(gain.mean, gain.interval(confidence), gain.se, gain.df, gain.se_seeds, gain.se_images,
                        gain.se_interaction, seeds_only_interval(gains, confidence),
                        VarianceComponents(**gain.components()), float(gains.std(ddof=1)), float(gains.min()),
                        float(gains.max()), gain.p_value())


def aggregate(runs: list[SeedRun], settings, failed: dict | None = None,
              max_seeds: int = MAX_PLANNED_SEEDS) -> StudyResult:
    """The study's numbers (see the module's docstring). `settings`: params.yaml's compare section (margin,
    alpha, confidence); `failed`: {seed: why} of seeds that did not finish, reported; `max_seeds`: the plan's cap."""
    check_runs(runs)
    runs = sorted(runs, key=lambda run: run.seed)
    seeds = [run.seed for run in runs]
    confidence, margin, alpha = settings.confidence, settings.min_accuracy_gain, settings.alpha
    correct = {m: np.stack([pseudo_values(run.predictions["label"], run.predictions[m])["accuracy"] for run in runs])
               for m in MODEL_NAMES}  # seeds x images, 0/1
    accuracy = {m: correct[m].mean(axis=1) for m in MODEL_NAMES}
    macro_f1 = {m: np.array([scores(run.predictions["label"], run.predictions[m])["macro_f1"] for run in runs])
                for m in MODEL_NAMES}
    gains = accuracy[DEEP] - accuracy[SMALL]
    gain = two_way(correct[DEEP] - correct[SMALL])
    verdict = decide(gain, margin, alpha)
    per_seed = per_seed_results(runs, accuracy, correct, settings)
    undecided = verdict.decision == "undecided"
    decided = StudyVerdict(**asdict(verdict), confidence=confidence,
                           plan=plan(gain, margin, alpha, cap=max_seeds) if undecided else None,
                           single_runs_saying_otherwise=sum(row.single_run_decision != verdict.decision
                                                            for row in per_seed))
    return StudyResult(
        seeds=tuple(seeds), k=len(runs), n_images=gain.n,
        failed_seeds={str(seed): why for seed, why in sorted((failed or {}).items())},
        models={m: StudyModel(accuracy_estimate(correct[m], confidence), seeds_only_interval(accuracy[m], confidence),
                              spread(macro_f1[m])) for m in MODEL_NAMES},
        accuracy_gain=gain_estimate(gain, gains, confidence),
        p_resnet_better=probability_of_superiority(gains, confidence),
        aso_epsilon_min=almost_stochastic_order(accuracy[DEEP], accuracy[SMALL], confidence, seeds[0]),
        per_class=class_differences(runs, settings), per_seed=per_seed, per_cpu_kind=per_cpu_kind(runs, gains),
        train_time_ratio=training_cost(runs), verdict=decided)


PLOT_TABLES = ("accuracy_per_seed.csv", "gain_per_seed.csv", "noise_sources.csv", "f1_difference.csv")


def plot_rows(study: StudyResult):
    """DVC plot data: (file name, rows, fields) for plots/study/, one per PLOT_TABLES."""
    title = lambda key: MODEL_TITLES.get(key, key)  # noqa: E731
    accuracy = []
    for model in MODEL_NAMES:
        entry = study.models[model].test_accuracy
        accuracy += [{"model": MODEL_TITLES[model], "seed": row.seed, "test_accuracy": row.test_accuracy(model),
                      "mean": entry.mean, "mean_lower": entry.ci[0], "mean_upper": entry.ci[1]}
                     for row in study.per_seed]
    margin, gain = study.verdict.margin, study.accuracy_gain
    gains = [{"run": f"seed {row.seed}", "gain": row.accuracy_gain, "lower": row.accuracy_gain_ci[0],
              "upper": row.accuracy_gain_ci[1], "winner": title(winner(*row.accuracy_gain_ci)), "margin": margin}
             for row in study.per_seed]
    gains.append({"run": f"mean of {study.k} seeds", "gain": gain.mean, "lower": gain.ci[0], "upper": gain.ci[1],
                  "winner": title(winner(*gain.ci)), "margin": margin})
    components = [{"source": source, "se_points": 100 * se} for source, se in (
        ("seeds (training randomness)", gain.se_seeds), ("test images (test-set sampling)", gain.se_images),
        ("seed x image interaction (in both above)", gain.se_interaction), ("both sources, combined", gain.se))]
    classes = [{"class": name, "difference": entry.f1_difference_mean, "lower": entry.f1_difference_adjusted_ci[0],
                "upper": entry.f1_difference_adjusted_ci[1], "winner": title(entry.winner),
                "holm_p_value": entry.holm_p_value} for name, entry in study.per_class.items()]
    return list(zip(PLOT_TABLES, (accuracy, gains, components, classes), (
        ["model", "seed", "test_accuracy", "mean", "mean_lower", "mean_upper"],
        ["run", "gain", "lower", "upper", "winner", "margin"], ["source", "se_points"],
        ["class", "difference", "lower", "upper", "winner", "holm_p_value"])))


def next_step(study: StudyResult, study_seeds: list, recipe="reference") -> str | None:
    """What to run next when the study is undecided: the planned seeds (the reference's in params.yaml's
    study.seeds, another recipe's named to `make study`), or why more seeds cannot decide."""
    planned = study.verdict.plan
    if study.verdict.decision != "undecided" or planned is None:
        return None
    if not planned.more_seeds_can_decide:
        if planned.planned_k is None:
            return ("more seeds cannot decide: the test set alone (standard error "
                    f"{100 * planned.test_set_floor_se:.2f} points) is too wide for the margin; the answer "
                    "stays undecided on these 10,000 test images")
        return (f"about {planned.planned_k} seeds would be needed, beyond this project's cap of {planned.cap}; "
                "the answer stays undecided")
    extra = list(range(max(study_seeds) + 1, max(study_seeds) + 1 + planned.planned_k - study.k))
    if recipe != "reference":
        return (f"the plan's second stage: k = {planned.planned_k}; run `make study RECIPE={recipe} "
                f"SEEDS=\"{' '.join(map(str, extra))}\"` (then decide once, at that k)")
    seeds = ", ".join(map(str, [*study_seeds, *extra]))
    return (f"the plan's second stage: k = {planned.planned_k}; set `study.seeds: [{seeds}]` in params.yaml, "
            "commit, and run `make study` (then decide once, at that k)")


def _pp(value) -> str:
    return f"{100 * value:+.2f}"


def _points(interval) -> str:
    return f"[{_pp(interval[0])}, {_pp(interval[1])}]"


def tables(study: StudyResult) -> list:
    """The study's tables (models, standard errors, seeds, classes), markdown lines, as SUMMARY.md prints them."""
    level, one_sided = f"{study.verdict.confidence:.0%}", f"{1 - study.verdict.alpha:.0%}"
    deep, small, gain = MODEL_TITLES[DEEP], MODEL_TITLES[SMALL], study.accuracy_gain
    lines = [f"| model | test accuracy, mean ({level} interval, both sources) | sd over seeds | min | max | "
             "macro F1, mean |", "|---|---|---|---|---|---|"]
    for model, title in ((DEEP, deep), (SMALL, small)):
        acc, f1 = study.models[model].test_accuracy, study.models[model].macro_f1
        lines.append(f"| {title} | {acc.mean:.4f} [{acc.ci[0]:.4f}, {acc.ci[1]:.4f}] | {acc.sd:.4f} | "
                     f"{acc.min:.4f} | {acc.max:.4f} | {f1.mean:.4f} |")
    lines += ["", "| accuracy gain, points | standard error, points |", "|---|---|",
              f"| seeds alone (training randomness) | {100 * gain.se_seeds:.3f} |",
              f"| test images alone (test-set sampling) | {100 * gain.se_images:.3f} |",
              f"| seed x image interaction (in both rows above) | {100 * gain.se_interaction:.3f} |",
              f"| both sources, interaction once (df {gain.df:.1f}) | {100 * gain.se:.3f} |"]
    lines += ["", f"| seed | {deep} | {small} | gain, points (one-sided {one_sided} bounds over its test images) | "
              "McNemar p | single run says |", "|---|---|---|---|---|---|"]
    for row in study.per_seed:
        lines.append(f"| {row.seed} | {row.resnet_test_accuracy:.4f} | {row.cnn_test_accuracy:.4f} | "
                     f"{_pp(row.accuracy_gain)} {_points(row.accuracy_gain_one_sided)} | "
                     f"{row.mcnemar_p:.3g} | {row.single_run_decision} |")
    lines += ["", f"| class | mean F1 difference ({level} interval) | Holm-adjusted p | winner |", "|---|---|---|---|"]
    for name, entry in study.per_class.items():
        lower, upper = entry.f1_difference_ci
        lines.append(f"| {name} | {entry.f1_difference_mean:+.4f} [{lower:+.4f}, {upper:+.4f}] | "
                     f"{entry.holm_p_value:.3g} | {MODEL_TITLES.get(entry.winner, entry.winner)} |")
    return lines


def _verdict_paragraphs(study: StudyResult, level: str) -> list:
    deep, small = MODEL_TITLES[DEEP], MODEL_TITLES[SMALL]
    verdict, gain, superiority, cost = study.verdict, study.accuracy_gain, study.p_resnet_better, \
        study.train_time_ratio
    return [f"Over {study.k} seeds, {deep}'s test accuracy gain over {small} is {_pp(gain.mean)} points "
            f"({level} interval {_points(gain.ci)}, both sources; seeds only {_points(gain.seeds_only_ci)}; "
            f"per seed from {_pp(gain.min)} to {_pp(gain.max)})"
            + (f", for {cost.median:.1f}x its training time (median over seeds; {cost.min:.1f}-"
               f"{cost.max:.1f}x)" if cost else "") + ". P(gain >= margin) = "
            f"{verdict.p_gain_at_least_margin:.2g}. P({deep} > {small}) = {superiority.value:.2f}, the share "
            f"of seeds won (exact {level} interval [{superiority.exact_ci[0]:.2f}, "
            f"{superiority.exact_ci[1]:.2f}]); Almost Stochastic Order eps_min = {study.aso_epsilon_min:.2f} "
            "(below 0.5: ResNet18 tends to dominate; reported, not part of the verdict).", "",
            f"Is the deep model worth its cost on this data? **{verdict.decision}**: tested against the margin "
            f"of {100 * verdict.margin:.2f} points (params.yaml `compare.min_accuracy_gain`), "
            f"{verdict.bounds_sentence()} the margin (alpha {verdict.alpha}).", "",
            f"{verdict.single_runs_saying_otherwise} of the {study.k} single runs, judged alone by the same "
            "rule on their test images, would have said otherwise."]


def study_summary(study: StudyResult) -> str:
    """plots/study/SUMMARY.md: the study's tables, then its verdict in words."""
    verdict = study.verdict
    level = f"{verdict.confidence:.0%}"
    lines = ["# Seed study: ResNet18 vs small CNN on Fashion-MNIST", "",
             f"Generated by `make study` from the per-image test predictions of {study.k} paired runs "
             f"(seeds {', '.join(map(str, study.seeds))}); do not edit by hand. Intervals cover training "
             "randomness and test-set sampling (seed x image variance decomposition, Satterthwaite df) unless "
             "they say otherwise.", "", *tables(study), "", "## Verdict", "",
             *_verdict_paragraphs(study, level)]
    if study.per_cpu_kind:
        lines += ["", "Seeds ran on more than one CPU kind (each rounds differently): " + "; ".join(
            f"{label}: seeds {', '.join(map(str, entry.seeds))}, mean gain {_pp(entry.accuracy_gain_mean)}"
            for label, entry in study.per_cpu_kind.items()) + "."]
    if verdict.plan:
        planned = verdict.plan
        lines += ["", f"Plan: {planned.planned_k or 'no number of'} seeds would clear the margin with "
                  f"{planned.power:.0%} probability if the estimates hold (the test-set part alone: standard "
                  f"error {100 * planned.test_set_floor_se:.2f} points)."]
    if study.failed_seeds:
        lines += ["", "Left out, failed: " + "; ".join(f"seed {s}: {why}" for s, why in study.failed_seeds.items())]
    return "\n".join(lines) + "\n"


def answer_table(studies: dict) -> str:
    """The README's answer table: per recipe ({title: its StudyResult, or None: not run yet}), both models'
    accuracy, the gain with its interval, the bound that decides, the verdict and the training-cost ratio (the
    median over seeds, with its range)."""
    ran = [study for study in studies.values() if study]
    level = f"{ran[0].verdict.confidence:.0%}" if ran else "95%"
    one_sided = f"{1 - ran[0].verdict.alpha:.0%}" if ran else "95%"
    lines = [f"| recipe | ResNet18 accuracy | Small CNN accuracy | gain, points [{level} interval] | one-sided "
             f"{one_sided} bound | verdict | training time, ResNet18 ÷ CNN (median over seeds) |",
             "|---|---|---|---|---|---|---|"]
    for recipe, study in studies.items():
        if study is None:
            lines.append(f"| {recipe} | not run yet | | | | | |")
            continue
        verdict, gain, cost = study.verdict, study.accuracy_gain, study.train_time_ratio
        bound = {"lower": f"lower {_pp(verdict.lower)}", "upper": f"upper {_pp(verdict.upper)}"}.get(
            verdict.deciding_bound, f"{_pp(verdict.lower)} to {_pp(verdict.upper)}")
        cost_text = f"{cost.median:.1f}× ({cost.min:.1f}–{cost.max:.1f}×)" if cost else "not recorded"
        lines.append(f"| {recipe} | {study.models[DEEP].test_accuracy.mean:.4f} | "
                     f"{study.models[SMALL].test_accuracy.mean:.4f} | {_pp(gain.mean)} {_points(gain.ci)} | {bound} | "
                     f"{verdict.decision} (k = {study.k}) | {cost_text} |")
    return "\n".join(lines)
