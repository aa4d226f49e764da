"""Static matplotlib figures: grouped per-class bars, learning curves, confusion matrices."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import CLASS_NAMES  # noqa: E402
from .uncertainty import NO_WINNER, winner  # noqa: E402

BASELINE_COLOUR, NO_WINNER_COLOUR = "#DD8452", "#888888"
PALETTE = ("#4C72B0", "#55A868", "#C44E52", "#8172B3", "#937860")  # the contenders', in order
METRIC_TITLES = {"precision": "Precision", "recall": "Recall", "f1": "F1"}


def colours(models, baseline: str) -> dict:
    """A colour per model: the baseline's orange, the others' from PALETTE in the order given; grey for no
    winner."""
    contenders = [model for model in models if model != baseline]
    return {**{model: PALETTE[i % len(PALETTE)] for i, model in enumerate(contenders)}, baseline: BASELINE_COLOUR,
            NO_WINNER: NO_WINNER_COLOUR}


def grouped_bars(comparison, metric: str, titles: dict, confidence=0.95):
    """x = class, one bar per model (a results.Comparison's) with its confidence interval as an error bar."""
    from .reports import per_class_rows

    rows = per_class_rows(comparison, metric, {})
    models, colour = list(comparison.models), colours(comparison.models, comparison.baseline)
    width = 0.8 / len(models)
    x = np.arange(len(CLASS_NAMES))
    figure, axes = plt.subplots(figsize=(11, 4.5))
    for i, model in enumerate(models):
        mine = [row for row in rows if row["model"] == model]
        values = np.array([row["value"] for row in mine])
        errors = np.abs(np.array([[row["lower"], row["upper"]] for row in mine]).T - values)  # below and above
        bars = axes.bar(x + (i - (len(models) - 1) / 2) * width, values, width, yerr=errors, capsize=2,
                        error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
                        label=titles.get(model, model), color=colour[model])
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=3)
    axes.set_xticks(x, CLASS_NAMES, rotation=30, ha="right")
    axes.set_ylim(0, 1.1)
    axes.set_ylabel(METRIC_TITLES.get(metric, metric))
    axes.set_title(f"{METRIC_TITLES.get(metric, metric)} per class on the test set "
                   f"(error bars: {confidence:.0%} CI)")
    axes.legend(loc="lower right")
    axes.grid(axis="y", alpha=0.3)
    return figure


def forest(contender, name: str, baseline: str, titles: dict, confidence=0.95):
    """Per class, a contender's F1 minus the baseline's (a results.ContenderComparison) with its confidence
    interval, and a zero line."""
    names = list(CLASS_NAMES)[::-1]  # first class at the top
    colour = colours((name,), baseline)
    figure, axes = plt.subplots(figsize=(8, 5))
    for row, class_name in enumerate(names):
        f1 = contender.per_class[class_name].f1
        lower, upper = f1.difference_ci
        line_colour = colour[winner(lower, upper, name, baseline)]
        axes.plot([lower, upper], [row, row], color=line_colour, linewidth=2)
        axes.plot(f1.difference, row, "o", color=line_colour)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_yticks(np.arange(len(names)), names)
    deep, small = titles.get(name, name), titles.get(baseline, baseline)
    axes.set_xlabel(f"F1 difference, {deep} - {small} ({confidence:.0%} CI)")
    axes.set_title(f"Per-class F1 difference: right of 0 favours {deep}, left {small}; grey: no significant "
                   "difference", fontsize=9)
    axes.grid(axis="x", alpha=0.3)
    return figure


def learning_curves(epochs: dict, steps: dict, titles: dict, baseline: str):
    """Train loss per step and validation accuracy per epoch, every model on shared axes (x = epoch)."""
    colour = colours(epochs, baseline)
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for model, rows in steps.items():
        per_epoch = {}
        for row in rows:
            per_epoch.setdefault(int(row["epoch"]), []).append(float(row["train_loss"]))
        x, y = [], []
        for epoch, losses in sorted(per_epoch.items()):
            x.extend(epoch - 1 + (np.arange(len(losses)) + 1) / len(losses))
            y.extend(losses)
        window = max(1, len(y) // 100)  # light smoothing: a moving average over ~1 % of the steps
        smooth = np.convolve(y, np.ones(window) / window, mode="valid")
        loss_axes.plot(x[window - 1:], smooth, label=titles.get(model, model), color=colour[model])
    for model, rows in epochs.items():
        acc_axes.plot([int(r["epoch"]) for r in rows], [float(r["val_accuracy"]) for r in rows], marker="o",
                      label=titles.get(model, model), color=colour[model])
    loss_axes.set(xlabel="epoch", ylabel="train loss (per step, smoothed)", title="Training loss")
    acc_axes.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def confusion_figure(matrix, title):
    matrix = np.asarray(matrix)
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    axes.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    axes.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    axes.set(xlabel="predicted", ylabel="actual", title=title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), value in np.ndenumerate(matrix):
        axes.text(col, row, str(value), ha="center", va="center", fontsize=7,
                  color="white" if value > threshold else "black")
    return figure


def close(figure):
    plt.close(figure)


OFFLINE_PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <script>
BUNDLE
    </script>
    <style>table {border-spacing: 15px;}</style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def write_offline_html_template(path, vl_version="5.20"):
    """A page for DVC's `plots.html_template` that carries Vega, Vega-Lite and vegaEmbed inline,
    so `dvc plots show` renders without a network (DVC's default page loads them from a CDN)."""
    import vl_convert

    from .files import write_text

    bundle = vl_convert.javascript_bundle(vl_version=vl_version)
    write_text(path, OFFLINE_PAGE.replace("BUNDLE", bundle))


# ---------------------------------------------------------------- the seed study (results.StudyResult)

def seed_accuracy(study, titles: dict):
    """Each model's test accuracy per seed (a dot each), with the mean and its interval from both sources."""
    figure, axes = plt.subplots(figsize=(3 + 1.5 * len(study.models), 4.5))
    confidence = next(iter(study.contenders.values())).verdict.confidence
    colour = colours(study.models, study.baseline)
    for position, model in enumerate(study.models):
        values = np.array([row.test_accuracy[model] for row in study.per_seed])
        offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
        axes.scatter(position + offsets, values, color=colour[model], zorder=3, label=titles.get(model, model))
        for offset, value, row in zip(offsets, values, study.per_seed):
            axes.annotate(str(row.seed), (position + offset, value), textcoords="offset points", xytext=(5, 0),
                          fontsize=7, va="center")
        entry = study.models[model].test_accuracy
        (lower, upper), mean = entry.ci, entry.mean
        axes.errorbar(position + 0.3, mean, yerr=[[mean - lower], [upper - mean]], fmt="D", color="black",
                      capsize=4)
    axes.set_xticks(range(len(study.models)), [titles.get(model, model) for model in study.models])
    axes.set_xlim(-0.5, len(study.models) - 0.4)
    axes.set_ylabel("test accuracy")
    axes.set_title(f"Test accuracy per seed (dots; labels: seed) and mean over {study.k} seeds\n"
                   f"(black: {confidence:.0%} interval, training randomness and test-set sampling)", fontsize=9)
    axes.grid(axis="y", alpha=0.3)
    return figure


def seed_forest(study, titles: dict):
    """Per class and contender, the mean F1 difference over seeds with its Bonferroni-adjusted interval (both
    sources); beside each class, its Holm-adjusted p-value. Coloured by the Holm decision."""
    names = list(CLASS_NAMES)[::-1]
    figure, all_axes = plt.subplots(1, len(study.contenders), figsize=(8 * len(study.contenders), 5), squeeze=False)
    for axes, (name, contender) in zip(all_axes[0], study.contenders.items()):
        colour = colours((name,), study.baseline)
        for row, class_name in enumerate(names):
            entry = contender.per_class[class_name]
            lower, upper = entry.f1_difference_adjusted_ci
            axes.plot([lower, upper], [row, row], color=colour[entry.winner], linewidth=2)
            axes.plot(entry.f1_difference_mean, row, "o", color=colour[entry.winner])
            axes.annotate(f"p = {entry.holm_p_value:.2g}", (upper, row), textcoords="offset points", xytext=(6, 0),
                          fontsize=7, va="center")
        axes.axvline(0, color="black", linewidth=0.8)
        axes.set_yticks(range(len(names)), names)
        level = 1 - (1 - contender.verdict.confidence) / len(CLASS_NAMES)
        axes.set_xlabel(f"mean F1 difference over {study.k} seeds, {titles.get(name, name)} - "
                        f"{titles.get(study.baseline, study.baseline)}\n({level:.1%} intervals: Bonferroni over "
                        f"{len(CLASS_NAMES)} classes, both sources)")
        axes.set_title("Per-class F1 difference over seeds; p: Holm-adjusted across the classes; grey: not won",
                       fontsize=9)
        axes.grid(axis="x", alpha=0.3)
    return figure


def seed_gains(study, titles: dict):
    """Per contender, the accuracy gain of each seed's run with its interval over its test images, and the mean
    over seeds with its interval from both sources, against the margin the verdict asks for: how far one run can
    be from the answer of several."""
    rows = study.per_seed
    figure, all_axes = plt.subplots(len(study.contenders), 1, figsize=(8, (1.6 + 0.45 * len(rows)) *
                                                                      len(study.contenders)), squeeze=False)
    for axes, (name, contender) in zip(all_axes[:, 0], study.contenders.items()):
        colour = colours((name,), study.baseline)
        for y, row in enumerate(rows):
            lower, upper = (100 * value for value in row.contenders[name].accuracy_gain_ci)
            line_colour = colour[winner(lower, upper, name, study.baseline)]
            axes.plot([lower, upper], [y, y], color=line_colour, linewidth=2)
            axes.plot(100 * row.contenders[name].accuracy_gain, y, "o", color=line_colour)
        mean_row, gain = len(rows) + 0.5, contender.accuracy_gain
        lower, upper = (100 * value for value in gain.ci)
        axes.plot([lower, upper], [mean_row, mean_row], color="black", linewidth=3)
        axes.plot(100 * gain.mean, mean_row, "D", color="black")
        axes.axvline(0, color="black", linewidth=0.8)
        axes.axvline(100 * contender.verdict.margin, color="#444444", linewidth=1, linestyle="--")
        axes.set_yticks([*range(len(rows)), mean_row], [f"seed {row.seed}" for row in rows] + [f"mean of {len(rows)}"])
        axes.invert_yaxis()
        axes.set_xlabel(f"test accuracy gain of {titles.get(name, name)} over "
                        f"{titles.get(study.baseline, study.baseline)}, percentage points\n(per seed: its test images "
                        "only; mean: training randomness and test-set sampling; dashed: the margin)")
        axes.set_title(f"One run per seed against the answer over seeds: {contender.verdict.decision}", fontsize=9)
        axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def noise_sources(study, titles: dict):
    """Per contender, the standard error of its mean gain from each source of noise, and combined."""
    labels = ["seeds\n(training randomness)", "test images\n(test-set sampling)", "interaction\n(in both)",
              "combined\n(interaction once)"]
    figure, axes = plt.subplots(figsize=(8.5, 3.8))
    width = 0.8 / len(study.contenders)
    x = np.arange(len(labels))
    for i, (name, contender) in enumerate(study.contenders.items()):
        gain = contender.accuracy_gain
        values = [100 * se for se in (gain.se_seeds, gain.se_images, gain.se_interaction, gain.se)]
        bars = axes.bar(x + (i - (len(study.contenders) - 1) / 2) * width, values, width,
                        color=PALETTE[i % len(PALETTE)], label=titles.get(name, name))
        axes.bar_label(bars, fmt="%.3f", fontsize=8)
    axes.set_xticks(x, labels)
    axes.tick_params(axis="x", labelsize=8)
    axes.set_ylabel("standard error of the mean gain, points")
    axes.set_title(f"Where the uncertainty of the gain comes from ({study.k} seeds x {study.n_images:,} "
                   "test images)", fontsize=9)
    if len(study.contenders) > 1:
        axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return figure


def search_figure(searches: dict, titles: dict):
    """The search's best validation accuracy after its first n configurations, per model, with the bootstrap band
    over those configurations (search_record.search_curve): against n, and against the CPU-hours the n trials cost."""
    figure, (by_configurations, by_hours) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for model, search in searches.items():
        points = [point for point in search.curve if point.best is not None]
        if not points:
            continue
        x_n = np.array([p.configurations for p in points])
        x_hours = np.array([p.cpu_hours for p in points])
        best = np.array([p.best for p in points])
        banded = [p for p in points if p.low is not None]
        for axes, x, x_band in ((by_configurations, x_n, [p.configurations for p in banded]),
                                (by_hours, x_hours, [p.cpu_hours for p in banded])):
            line, = axes.step(x, best, where="post", label=titles.get(model, model))
            if banded:
                axes.fill_between(x_band, [p.low for p in banded], [p.high for p in banded], step="post",
                                  alpha=0.2, color=line.get_color())
    by_configurations.set(xlabel="configurations", ylabel="best validation accuracy")
    by_hours.set(xlabel="training CPU-hours")
    for axes in (by_configurations, by_hours):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    figure.suptitle("The search's best after its first n configurations\n(band: 5-95 % of the bootstrap resamples "
                    "of those configurations that drew a complete trial)", fontsize=10)
    figure.tight_layout()
    return figure


def accuracy_against_cost(points: list, titles: dict):
    """Test accuracy (mean over seeds, with its interval over seeds and test images) against training
    CPU-seconds (median over seeds), per model and recipe: the cost side of "worth its cost". `points`: dicts
    with recipe, model, accuracy, lower, upper, seconds."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    markers = {"reference": "o", "tuned_subset": "s", "tuned": "D"}
    recipes = {"reference": "reference recipe", "tuned_subset": "first search's recipe (a fifth of the data)",
               "tuned": "full search's recipe"}
    for point in points:
        recipe = recipes.get(point["recipe"], point["recipe"])
        axes.errorbar(point["seconds"], point["accuracy"], yerr=[[point["accuracy"] - point["lower"]],
                                                                   [point["upper"] - point["accuracy"]]],
                      marker=markers.get(point["recipe"], "^"), capsize=4, linestyle="none",
                      label=f"{titles.get(point['model'], point['model'])}, {recipe}")
    axes.set_xscale("log")
    axes.set(xlabel="training CPU-seconds per run (median over seeds; log scale)",
             ylabel="test accuracy (mean, 95 % interval)", title="Test accuracy against training cost")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
