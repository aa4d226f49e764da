"""A seed study: is ResNet18 better than the CNN on this data, over k paired training runs?

One training run per model answers "do these two checkpoints differ on these 10,000 test images" (McNemar,
paired bootstrap: test-set sampling). Training randomness (initialisation, batch order, dropout, the
validation split) moves the answer too, as much again (Bouthillier et al., MLSys 2021). A study trains both
models once per seed, with everything else equal, and asks the question over the seeds:
- each model's test accuracy and macro F1 over seeds: mean, sd, min, max;
- the paired gain (ResNet18 - CNN, same seed): its mean with a t-interval over seeds, and a paired t-test
  (Wilcoxon's signed-rank test beside it from 6 seeds on);
- P(ResNet18 > CNN): the share of seeds where ResNet18 is ahead, with a bootstrap CI over seeds;
- per class: the mean F1 difference with its t-interval, and in how many seeds the single run's own
  bootstrap CI excluded 0;
- the verdict, by the single run's rule over seeds: worth it only when the mean gain is at least
  compare.min_accuracy_gain and the paired t-test gives p < compare.alpha.
Everything here is computed from each seed's per-image test predictions (numpy, scipy; seconds).
"""

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from . import CLASS_NAMES, MODEL_NAMES
from .errors import PipelineError
from .uncertainty import _model_scores, excludes_zero, mcnemar_exact, paired_bootstrap

DEEP, SMALL = MODEL_NAMES
MIN_SEEDS = 2
WILCOXON_FROM = 6  # seeds: below this the signed-rank test cannot reach p < 0.05 two-sided


class StudyError(PipelineError):
    pass


@dataclass
class SeedRun:
    """One seed's finished pipeline run: its params, and its test predictions (labels and each model's class)."""
    seed: int
    params: dict
    predictions: dict  # {"label": array, "resnet": array, "cnn": array}
    info: dict = field(default_factory=dict)  # run ids, timings, machine


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
IGNORED_SECTIONS = ("study.", "compare.", "tracking.")


def check_runs(runs: list[SeedRun]):
    """Refuse, in one line, what is not a study: fewer than 2 seeds, a seed twice, or runs whose params
    differ in anything but the seed (naming the params)."""
    seeds = [run.seed for run in runs]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise StudyError(f"seed {', '.join(map(str, repeated))} appears more than once; a study's seeds differ")
    if len(runs) < MIN_SEEDS:
        raise StudyError(f"a study needs at least {MIN_SEEDS} finished seeds, got {len(runs)} "
                         f"({', '.join(map(str, seeds)) or 'none'}); run more seeds (make study)")
    first = {k: v for k, v in flatten(runs[0].params).items()
             if k not in IGNORED_PARAMS and not k.startswith(IGNORED_SECTIONS)}
    for run in runs[1:]:
        other = {k: v for k, v in flatten(run.params).items()
                 if k not in IGNORED_PARAMS and not k.startswith(IGNORED_SECTIONS)}
        differing = sorted(key for key in set(first) | set(other) if first.get(key) != other.get(key))
        if differing:
            raise StudyError(f"seeds {runs[0].seed} and {run.seed} ran with different params ({', '.join(differing)}); "
                             "a study varies the seed only: rerun those seeds with the same params.yaml")
        labels = run.predictions["label"]
        if not np.array_equal(labels, runs[0].predictions["label"]):
            raise StudyError(f"seeds {runs[0].seed} and {run.seed} were tested on different test sets")


def t_interval(values: np.ndarray, confidence: float) -> tuple:
    """Mean and its t-interval over the rows of `values` (seeds), per column."""
    k = len(values)
    mean = values.mean(axis=0)
    half = stats.t.ppf((1 + confidence) / 2, k - 1) * values.std(axis=0, ddof=1) / np.sqrt(k)
    return mean, mean - half, mean + half


def spread(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)), "min": float(values.min()),
            "max": float(values.max())}


def probability_of_superiority(gains: np.ndarray, confidence: float, samples: int, seed: int) -> dict:
    """P(ResNet18 > CNN) over paired seeds (a tie counts one half), with a percentile bootstrap CI over seeds
    (Bouthillier et al.). With few seeds that all agree, the bootstrap has nothing to resample and its interval
    collapses to one point; the exact (Clopper-Pearson) interval of the share of seeds won says how little k
    seeds can pin down."""
    wins = (gains > 0) + 0.5 * (gains == 0)
    draws = np.random.default_rng(seed).integers(0, len(gains), size=(samples, len(gains)))
    resampled = wins[draws].mean(axis=1)
    lower, upper = np.percentile(resampled, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    exact = stats.binomtest(int((gains > 0).sum()), len(gains)).proportion_ci(confidence, method="exact")
    return {"value": float(wins.mean()), "ci": [float(lower), float(upper)], "bootstrap_samples": samples,
            "exact_ci": [float(exact.low), float(exact.high)]}


def aggregate(runs: list[SeedRun], settings, failed: dict | None = None) -> dict:
    """The study's numbers (see the module's docstring). `settings`: params.yaml's compare section (the verdict
    rule, confidence, bootstrap samples); `failed`: {seed: why} of seeds that did not finish, reported."""
    check_runs(runs)
    runs = sorted(runs, key=lambda run: run.seed)
    seeds = [run.seed for run in runs]
    confidence = settings.confidence
    y_true = runs[0].predictions["label"]
    point = np.ones((1, len(y_true)))
    scores = {model: [_model_scores(point, y_true, run.predictions[model]) for run in runs] for model in MODEL_NAMES}
    accuracy = {m: np.array([float(s["accuracy"][0]) for s in scores[m]]) for m in MODEL_NAMES}
    macro_f1 = {m: np.array([float(s["macro_f1"][0]) for s in scores[m]]) for m in MODEL_NAMES}
    class_f1 = {m: np.array([s["f1"][0] for s in scores[m]]) for m in MODEL_NAMES}  # seeds x classes

    gains = accuracy[DEEP] - accuracy[SMALL]
    mean_gain, gain_lower, gain_upper = t_interval(gains, confidence)
    t_test = stats.ttest_rel(accuracy[DEEP], accuracy[SMALL])
    t_p = float(t_test.pvalue) if np.isfinite(t_test.pvalue) else 1.0  # all gains equal: no evidence either way
    wilcoxon = float(stats.wilcoxon(gains).pvalue) if len(runs) >= WILCOXON_FROM else None

    per_seed, single_run_ci_excludes_zero = [], np.zeros(len(CLASS_NAMES), dtype=int)
    for index, run in enumerate(runs):
        boot = paired_bootstrap(y_true, run.predictions[DEEP], run.predictions[SMALL], settings.bootstrap_samples,
                                confidence, run.seed)
        mcnemar = mcnemar_exact(y_true, run.predictions[DEEP], run.predictions[SMALL])
        single_run_ci_excludes_zero += [excludes_zero(boot["difference"]["f1"], c) for c in range(len(CLASS_NAMES))]
        gain_ci = [boot["difference"]["accuracy"]["lower"], boot["difference"]["accuracy"]["upper"]]
        worth_it = bool(gains[index] >= settings.min_accuracy_gain and mcnemar["p_value"] < settings.alpha)
        per_seed.append({"seed": run.seed, **{f"{m}_test_accuracy": float(accuracy[m][index]) for m in MODEL_NAMES},
                         **{f"{m}_macro_f1": float(macro_f1[m][index]) for m in MODEL_NAMES},
                         "accuracy_gain": float(gains[index]), "accuracy_gain_ci": gain_ci,
                         "mcnemar_p": mcnemar["p_value"], "single_run_verdict": worth_it, **run.info})

    differences = class_f1[DEEP] - class_f1[SMALL]
    class_mean, class_lower, class_upper = t_interval(differences, confidence)
    per_class = {name: {"f1_difference_mean": float(class_mean[c]),
                        "f1_difference_ci": [float(class_lower[c]), float(class_upper[c])],
                        "seeds_single_run_ci_excludes_zero": int(single_run_ci_excludes_zero[c]),
                        **{f"{m}_f1_mean": float(class_f1[m][:, c].mean()) for m in MODEL_NAMES}}
                 for c, name in enumerate(CLASS_NAMES)}

    conditions = {"mean_gain_at_least_min": bool(mean_gain >= settings.min_accuracy_gain),
                  "paired_t_test_significant": bool(t_p < settings.alpha)}
    worth_it = all(conditions.values())
    return {
        "seeds": seeds,
        "k": len(runs),
        "failed_seeds": {str(seed): why for seed, why in sorted((failed or {}).items())},
        "models": {m: {"test_accuracy": spread(accuracy[m]),
                       "test_accuracy_ci": [float(v) for v in t_interval(accuracy[m], confidence)[1:]],
                       "macro_f1": spread(macro_f1[m])} for m in MODEL_NAMES},
        "accuracy_gain": {"mean": float(mean_gain), "ci": [float(gain_lower), float(gain_upper)],
                          "sd": float(gains.std(ddof=1)), "min": float(gains.min()), "max": float(gains.max())},
        "paired_t_test": {"statistic": float(t_test.statistic) if np.isfinite(t_test.statistic) else 0.0,
                          "p_value": t_p, "df": len(runs) - 1},
        "wilcoxon_p": wilcoxon,
        "p_resnet_better": probability_of_superiority(gains, confidence, 10_000, seeds[0]),
        "per_class": per_class,
        "per_seed": per_seed,
        "verdict": {"deep_model_worth_it": worth_it, "conditions": conditions,
                    "min_accuracy_gain": settings.min_accuracy_gain, "alpha": settings.alpha,
                    "confidence": confidence,
                    "single_runs_saying_otherwise": sum(row["single_run_verdict"] != worth_it for row in per_seed)},
    }


def headline(study: dict) -> dict:
    """The few numbers of metrics/study.json that `dvc metrics show` should put first."""
    return {"k": study["k"], **{m: {"test_accuracy_mean": study["models"][m]["test_accuracy"]["mean"]}
                                for m in MODEL_NAMES},
            "accuracy_gain_mean": study["accuracy_gain"]["mean"], "accuracy_gain_ci": study["accuracy_gain"]["ci"],
            "paired_t_p": study["paired_t_test"]["p_value"], "p_resnet_better": study["p_resnet_better"]["value"],
            "deep_model_worth_it": study["verdict"]["deep_model_worth_it"]}


def plot_rows(study: dict):
    """DVC plot data: (file name, rows, fields) for plots/study/."""
    from . import MODEL_TITLES

    def winner(lower, upper):
        return MODEL_TITLES[DEEP] if lower > 0 else MODEL_TITLES[SMALL] if upper < 0 else "no significant difference"

    accuracy = []
    for model in MODEL_NAMES:
        lower, upper = study["models"][model]["test_accuracy_ci"]
        mean = study["models"][model]["test_accuracy"]["mean"]
        accuracy += [{"model": MODEL_TITLES[model], "seed": row["seed"], "test_accuracy": row[f"{model}_test_accuracy"],
                      "mean": mean, "mean_lower": lower, "mean_upper": upper} for row in study["per_seed"]]
    gains = [{"run": f"seed {row['seed']}", "gain": row["accuracy_gain"], "lower": row["accuracy_gain_ci"][0],
              "upper": row["accuracy_gain_ci"][1], "winner": winner(*row["accuracy_gain_ci"])}
             for row in study["per_seed"]]
    gains.append({"run": f"mean of {study['k']} seeds", "gain": study["accuracy_gain"]["mean"],
                  "lower": study["accuracy_gain"]["ci"][0], "upper": study["accuracy_gain"]["ci"][1],
                  "winner": winner(*study["accuracy_gain"]["ci"])})
    classes = [{"class": name, "difference": entry["f1_difference_mean"], "lower": entry["f1_difference_ci"][0],
                "upper": entry["f1_difference_ci"][1], "winner": winner(*entry["f1_difference_ci"]),
                "seeds_single_run_ci_excludes_zero": entry["seeds_single_run_ci_excludes_zero"]}
               for name, entry in study["per_class"].items()]
    return [("accuracy_per_seed.csv", accuracy, ["model", "seed", "test_accuracy", "mean", "mean_lower",
                                                  "mean_upper"]),
            ("gain_per_seed.csv", gains, ["run", "gain", "lower", "upper", "winner"]),
            ("f1_difference.csv", classes, ["class", "difference", "lower", "upper", "winner",
                                            "seeds_single_run_ci_excludes_zero"])]


def summary_markdown(study: dict) -> str:
    from . import MODEL_TITLES

    deep, small = MODEL_TITLES[DEEP], MODEL_TITLES[SMALL]
    verdict, gain, level = study["verdict"], study["accuracy_gain"], f"{study['verdict']['confidence']:.0%}"
    pp = lambda value: f"{100 * value:+.2f}"  # noqa: E731
    lines = ["# Seed study: ResNet18 vs small CNN on Fashion-MNIST", "",
             f"Generated by `make study` from the per-image test predictions of {study['k']} paired runs "
             f"(seeds {', '.join(map(str, study['seeds']))}); do not edit by hand.", "",
             f"| model | test accuracy, mean ({level} t-interval) | sd | min | max | macro F1, mean |",
             "|---|---|---|---|---|---|"]
    for model, title in ((DEEP, deep), (SMALL, small)):
        acc, f1 = study["models"][model]["test_accuracy"], study["models"][model]["macro_f1"]
        lower, upper = study["models"][model]["test_accuracy_ci"]
        lines.append(f"| {title} | {acc['mean']:.4f} [{lower:.4f}, {upper:.4f}] | {acc['sd']:.4f} | {acc['min']:.4f} "
                     f"| {acc['max']:.4f} | {f1['mean']:.4f} |")
    lines += ["", "| seed | ResNet18 | Small CNN | gain, points (single-run CI) | McNemar p | single run says |",
              "|---|---|---|---|---|---|"]
    for row in study["per_seed"]:
        lower, upper = row["accuracy_gain_ci"]
        lines.append(f"| {row['seed']} | {row['resnet_test_accuracy']:.4f} | {row['cnn_test_accuracy']:.4f} | "
                     f"{pp(row['accuracy_gain'])} [{pp(lower)}, {pp(upper)}] | {row['mcnemar_p']:.3g} | "
                     f"{'yes' if row['single_run_verdict'] else 'no'} |")
    lines += ["", f"| class | mean F1 difference ({level} t-interval) | seeds whose single-run CI excludes 0 |",
              "|---|---|---|"]
    for name, entry in study["per_class"].items():
        lower, upper = entry["f1_difference_ci"]
        lines.append(f"| {name} | {entry['f1_difference_mean']:+.4f} [{lower:+.4f}, {upper:+.4f}] | "
                     f"{entry['seeds_single_run_ci_excludes_zero']} of {study['k']} |")
    t_test, superiority = study["paired_t_test"], study["p_resnet_better"]
    held = lambda ok: "holds" if ok else "does not hold"  # noqa: E731
    wilcoxon = (f" Wilcoxon's signed-rank test: p = {study['wilcoxon_p']:.3g}." if study["wilcoxon_p"] is not None
                else f" (Wilcoxon's signed-rank test needs at least {WILCOXON_FROM} seeds.)")
    answer = "yes" if verdict["deep_model_worth_it"] else "no"
    lines += ["", "## Verdict", "",
              f"Over {study['k']} seeds, {deep} is {pp(gain['mean'])} points of test accuracy ahead of {small} "
              f"({level} t-interval [{pp(gain['ci'][0])}, {pp(gain['ci'][1])}]; per seed from {pp(gain['min'])} "
              f"to {pp(gain['max'])}). Paired t-test over seeds: t = {t_test['statistic']:.2f}, "
              f"p = {t_test['p_value']:.3g}.{wilcoxon} P({deep} > {small}) = {superiority['value']:.2f} "
              f"({level} bootstrap CI over seeds [{superiority['ci'][0]:.2f}, {superiority['ci'][1]:.2f}]; exact "
              f"binomial interval of the share of seeds won [{superiority['exact_ci'][0]:.2f}, "
              f"{superiority['exact_ci'][1]:.2f}]).", "",
              f"Is the deep model worth its cost on this data? **{answer}**. The rule (params.yaml, `compare`), "
              "over seeds:",
              f"- a mean accuracy gain of at least {100 * verdict['min_accuracy_gain']:.2f} points: "
              f"{held(verdict['conditions']['mean_gain_at_least_min'])} ({pp(gain['mean'])} points);",
              f"- a paired t-test over seeds with p < {verdict['alpha']}: "
              f"{held(verdict['conditions']['paired_t_test_significant'])} (p = {t_test['p_value']:.3g}).", "",
              f"{verdict['single_runs_saying_otherwise']} of the {study['k']} single runs, judged alone (gain and "
              "McNemar's test on one pair of checkpoints), would have said otherwise."]
    if study["failed_seeds"]:
        lines += ["", "Left out, failed: " + "; ".join(f"seed {s}: {why}" for s, why in study["failed_seeds"].items())]
    return "\n".join(lines) + "\n"
