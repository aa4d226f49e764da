"""A seed study: is each contender worth its cost over the baseline on this data, over k paired training runs?

One training run per model answers "do these two checkpoints differ on these 10,000 test images": its
interval covers test-set sampling only. Training randomness (initialisation, batch order, dropout, the
validation split) moves the answer too (Bouthillier et al., MLSys 2021). A study trains every compared model once
per seed, with everything else equal, and every number below covers both sources of noise: per image and seed,
the correctness difference (or a metric's per-image contribution) is decomposed over seeds x test images
(uncertainty.two_way: a two-way random-effects model, the interaction counted once, Satterthwaite's degrees
of freedom). What comes out:
- each model's test accuracy and each contender's paired gain (contender - baseline): mean, interval, and the
  standard error each source gives alone; the seeds-only t-interval beside it, labelled as what it covers;
- the verdict against the margin (compare.min_accuracy_gain, compare.alpha): "worth it" when the one-sided
  (1 - alpha) lower bound of the gain reaches the margin, "not worth it" when the upper bound stays below it,
  else "undecided" (Holm's across several contenders), with P(gain >= margin) and, when undecided, how many
  seeds would likely decide (`plan`);
- per class: the F1 difference with its interval, Holm-adjusted p-values across the classes (a class is won
  only after adjustment) and Bonferroni-adjusted intervals for the figure;
- P(contender > baseline), the share of seeds won, with its exact interval; Almost Stochastic Order's eps_min
  (Dror et al. 2019; deepsig) on the per-seed accuracies, reported beside the verdict, not part of it;
- each seed's own single-run verdict, by the same rule on its test images alone.
Everything is computed from each seed's per-image test predictions (numpy, scipy, statsmodels; seconds).
reports.py writes it in words, tables and plot rows.
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from . import CLASS_NAMES
from .errors import PipelineError
from .results import (
    AccuracyEstimate,
    ClassDifference,
    ContenderStudy,
    CostRatio,
    CpuKindGain,
    GainEstimate,
    Plan,
    RunRecord,
    SeedGain,
    SeedResult,
    Spread,
    StudyModel,
    StudyResult,
    StudyVerdict,
    Superiority,
    VarianceComponents,
)
from .uncertainty import NO_WINNER, Estimate, decide_each, mcnemar_exact, pseudo_values, scores, two_way

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
    predictions: dict  # {"label": array, <model>: array, ...}
    record: RunRecord | None = None

    @property
    def compared(self) -> tuple[str, tuple[str, ...]]:
        """(the baseline, the contenders) its params compared."""
        return compared_models(self.params)

    @property
    def models(self) -> tuple[str, ...]:
        """Every model it trained, the contenders then the baseline (trained_models)."""
        return trained_models(self.params)


def compared_models(params: dict) -> tuple[str, tuple[str, ...]]:
    """(baseline, contenders) of a seed's params.yaml; one written before models were data compared the pair
    models.LEGACY_BASELINE and LEGACY_CONTENDERS."""
    from .models import LEGACY_BASELINE, LEGACY_CONTENDERS

    section = params.get("compare") or {}
    if "baseline" not in section:
        return LEGACY_BASELINE, LEGACY_CONTENDERS
    return section["baseline"], tuple(section["contenders"])


def trained_models(params: dict) -> tuple[str, ...]:
    """Every model a seed's params.yaml compared, the contenders then the baseline: the order of its predictions'
    columns and result files (as params.CompareParams.models)."""
    baseline, contenders = compared_models(params)
    return (*contenders, baseline)


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
COMPARED_PARAMS = {"compare.baseline", "compare.contenders"}  # in compare, but they choose what is trained


# The recipe knobs a model section gained after seeds were committed, with the values that trained as before:
# a section without them ran Adam, no augmentation, and StepLR exactly when it had a step_size.
RECIPE_DEFAULTS = {"weight_decay": 0.0, "augment": "none"}


def with_recipe_defaults(params: dict) -> dict:
    """`params` with each model's recipe knobs spelled out: today's params.yaml through its validation (every
    default), one written before models were data by RECIPE_DEFAULTS."""
    if "models" in params:
        from .params import Params

        try:
            return Params.model_validate({**params, "tune": None}).model_dump(exclude={"tune"})
        except Exception:  # noqa: BLE001 - not valid today: compared as written
            return params
    params = {**params}
    for model in trained_models(params):
        if isinstance(params.get(model), dict) and "schedule" not in params[model]:
            section = {**RECIPE_DEFAULTS, **params[model]}
            section["schedule"] = "step" if section.get("step_size") else "constant"
            params[model] = section
    return params


def comparable_params(params: dict) -> dict:
    """The params that must agree across a study's seeds: all but those that may differ (above), the recipe
    knobs spelled out (with_recipe_defaults)."""
    return {key: value for key, value in flatten(with_recipe_defaults(params)).items()
            if key not in IGNORED_PARAMS and (key in COMPARED_PARAMS or not key.startswith(IGNORED_SECTIONS))}


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


def per_seed_results(runs, accuracy, correct, baseline, settings) -> tuple[SeedResult, ...]:
    """Each seed's single run: each model's accuracy and each contender judged alone: its gain, that gain's interval
    and the one-sided bounds the rule uses, over its test images only, McNemar's test, the verdict the same rule
    gives on those images (Holm's across several contenders), and the run's record (CPU kind, training times,
    MLflow runs, as its run.json holds them)."""
    rows = []
    contenders = [m for m in correct if m != baseline]
    for index, run in enumerate(runs):
        singles = {c: two_way(correct[c][index] - correct[baseline][index]) for c in contenders}
        verdicts = decide_each(singles, settings.min_accuracy_gain, settings.alpha)
        gains = {c: SeedGain(singles[c].mean, singles[c].interval(settings.confidence),
                             (verdicts[c].lower, verdicts[c].upper),
                             mcnemar_exact(run.predictions["label"], run.predictions[c],
                                           run.predictions[baseline]).p_value, verdicts[c].decision)
                 for c in contenders}
        rows.append(SeedResult(run.seed, {m: float(accuracy[m][index]) for m in correct}, gains, run.record))
    return tuple(rows)


def training_cost(runs, contender: str, baseline: str) -> CostRatio | None:
    """A contender's training time over the baseline's, per seed (from each seed's run.json): median and range
    (None when no seed recorded its times)."""
    ratios = [run.record.train_seconds[contender] / run.record.train_seconds[baseline] for run in runs if run.record]
    if not ratios:
        return None
    return CostRatio(float(np.median(ratios)), float(min(ratios)), float(max(ratios)))


def class_differences(runs, contender: str, baseline: str, settings) -> dict[str, ClassDifference]:
    """Per class, a contender's F1 difference over seeds with its interval from both sources, its Holm-adjusted
    p-value across the classes (statsmodels), and a Bonferroni-adjusted interval."""
    from statsmodels.stats.multitest import multipletests

    contributions = {m: np.stack([pseudo_values(run.predictions["label"], run.predictions[m])["f1"] for run in runs])
                     for m in (contender, baseline)}  # seeds x classes x images
    estimates = [two_way(contributions[contender][:, c] - contributions[baseline][:, c])
                 for c in range(len(CLASS_NAMES))]
    p_values = [estimate.p_value() for estimate in estimates]
    adjusted = multipletests(p_values, alpha=1 - settings.confidence, method="holm")[1]
    simultaneous = 1 - (1 - settings.confidence) / len(CLASS_NAMES)
    differences = {}
    for c, (name, estimate) in enumerate(zip(CLASS_NAMES, estimates)):
        significant = adjusted[c] < 1 - settings.confidence
        differences[name] = ClassDifference(
            estimate.mean, estimate.interval(settings.confidence), estimate.interval(simultaneous), estimate.se,
            p_values[c], float(adjusted[c]),
            (contender if estimate.mean > 0 else baseline) if significant else NO_WINNER,
            {m: float(contributions[m][:, c].mean()) for m in (contender, baseline)})
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
    """The study's numbers (see the module's docstring). The baseline and contenders are those the seeds compared;
    `settings`: params.yaml's compare section (margin, alpha, confidence); `failed`: {seed: why} of seeds that did
    not finish, reported; `max_seeds`: the plan's cap."""
    check_runs(runs)
    runs = sorted(runs, key=lambda run: run.seed)
    seeds = [run.seed for run in runs]
    baseline, contenders = runs[0].compared
    compared = runs[0].models
    confidence, margin, alpha = settings.confidence, settings.min_accuracy_gain, settings.alpha
    correct = {m: np.stack([pseudo_values(run.predictions["label"], run.predictions[m])["accuracy"] for run in runs])
               for m in compared}  # seeds x images, 0/1
    accuracy = {m: correct[m].mean(axis=1) for m in compared}
    macro_f1 = {m: np.array([scores(run.predictions["label"], run.predictions[m])["macro_f1"] for run in runs])
                for m in compared}
    gain = {c: two_way(correct[c] - correct[baseline]) for c in contenders}
    verdicts = decide_each(gain, margin, alpha)
    per_seed = per_seed_results(runs, accuracy, correct, baseline, settings)
    results = {}
    for c in contenders:
        gains, verdict = accuracy[c] - accuracy[baseline], verdicts[c]
        decided = StudyVerdict(
            **asdict(verdict), confidence=confidence,
            plan=plan(gain[c], margin, alpha, cap=max_seeds) if verdict.decision == "undecided" else None,
            single_runs_saying_otherwise=sum(row.contenders[c].single_run_decision != verdict.decision
                                             for row in per_seed))
        results[c] = ContenderStudy(
            accuracy_gain=gain_estimate(gain[c], gains, confidence),
            p_better=probability_of_superiority(gains, confidence),
            aso_epsilon_min=almost_stochastic_order(accuracy[c], accuracy[baseline], confidence, seeds[0]),
            per_class=class_differences(runs, c, baseline, settings), per_cpu_kind=per_cpu_kind(runs, gains),
            train_time_ratio=training_cost(runs, c, baseline), verdict=decided)
    return StudyResult(
        seeds=tuple(seeds), k=len(runs), n_images=correct[baseline].shape[1],
        failed_seeds={str(seed): why for seed, why in sorted((failed or {}).items())}, baseline=baseline,
        models={m: StudyModel(accuracy_estimate(correct[m], confidence), seeds_only_interval(accuracy[m], confidence),
                              spread(macro_f1[m])) for m in compared},
        contenders=results, per_seed=per_seed)


def next_step(study: StudyResult, study_seeds: list, recipe="reference") -> str | None:
    """What to run next when a contender is undecided: the planned seeds (the most any undecided contender plans;
    the reference's in params.yaml's study.seeds, another recipe's named to `make study`), or why more seeds
    cannot decide."""
    plans = [c.verdict.plan for c in study.contenders.values() if c.verdict.decision == "undecided" and c.verdict.plan]
    if not plans:
        return None
    decidable = [p for p in plans if p.more_seeds_can_decide]
    if not decidable:
        planned = plans[0]
        if planned.planned_k is None:
            return ("more seeds cannot decide: the test set alone (standard error "
                    f"{100 * planned.test_set_floor_se:.2f} points) is too wide for the margin; the answer "
                    "stays undecided on these 10,000 test images")
        return (f"about {planned.planned_k} seeds would be needed, beyond this project's cap of {planned.cap}; "
                "the answer stays undecided")
    planned_k = max(p.planned_k for p in decidable)
    extra = list(range(max(study_seeds) + 1, max(study_seeds) + 1 + planned_k - study.k))
    if recipe != "reference":
        return (f"the plan's second stage: k = {planned_k}; run `make study RECIPE={recipe} "
                f"SEEDS=\"{' '.join(map(str, extra))}\"` (then decide once, at that k)")
    seeds = ", ".join(map(str, [*study_seeds, *extra]))
    return (f"the plan's second stage: k = {planned_k}; set `study.seeds: [{seeds}]` in params.yaml, "
            "commit, and run `make study` (then decide once, at that k)")
