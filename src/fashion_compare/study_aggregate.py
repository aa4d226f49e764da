"""A seed study's aggregate, from its committed seed folders (seed_folders.py's format): every folder validated
first (one line naming the file and what to do), each seed's comparison recomputed by today's rule, then
metrics/study.json, plots/study/ and the study's MLflow run written together, and the figure of every recipe's
accuracy against its cost. The statistics are study.py's; their words and rows reports.py's.
"""

import hashlib
from pathlib import Path

import numpy as np
import yaml

from . import NUM_CLASSES, comparison, plots, records, reports, results, study, tracking
from .errors import PipelineError
from .files import check_writable, read_csv_rows, read_json, save_figure, together, write_csv, write_json, write_text
from .seed_folders import Recipe, prediction_fields, read_run_file, seeds_named


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _refuse(path, what, remedy) -> PipelineError:
    return study.StudyError(f"{path}: {what}; {remedy}")


def _prediction_columns(path, rows, fields, remedy) -> list:
    columns = [[] for _ in fields]
    for row_number, row in enumerate(rows, start=2):
        values = [int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else None
                  for value in row.values()]
        if len(values) != len(fields) or None in values:
            raise _refuse(path, f"row {row_number}: {list(row.values())} is not {len(fields)} integers",
                          remedy)
        image, *classes = values
        if image != row_number - 2:
            raise _refuse(path, f"row {row_number}: image {image}, expected {row_number - 2}", remedy)
        if not all(0 <= value < NUM_CLASSES for value in classes):
            raise _refuse(path, f"row {row_number}: a class outside 0-{NUM_CLASSES - 1} ({list(row.values())})",
                          remedy)
        for column, value in zip(columns, values):
            column.append(value)
    return columns


def load_predictions(folder: Path, seed: int, info: results.SeedRunFile, compared) -> dict:
    """A seed's predictions.csv, validated: its checksum as collected, the header (`compared`: its models, the
    contenders then the baseline), image ids 0..n-1 in order, labels and predictions classes 0-9.
    {"label", <model>: arrays}."""
    path = folder / "predictions.csv"
    remedy = f"restore it (git checkout -- {path}) or run seed {seed} again (remove {folder}, make study)"
    if info.predictions_sha256 != sha256(path):
        raise _refuse(path, "does not match the checksum run.json recorded when the seed was collected "
                      "(edited or damaged since)", remedy)
    rows = read_csv_rows(path, f"seed {seed} again (remove {folder}, make study)")
    if not rows:
        raise _refuse(path, "holds no predictions", remedy)
    fields = prediction_fields(compared)
    if list(rows[0]) != fields:
        raise _refuse(path, f"header is {list(rows[0])}, expected {fields}", remedy)
    columns = _prediction_columns(path, rows, fields, remedy)
    return {name: np.array(column) for name, column in zip(fields[1:], columns[1:])}


def load_seed(folder: Path, seed: int) -> study.SeedRun:
    """A finished seed's folder, every file validated (one line naming the file and what to do)."""
    remedy = f"run seed {seed} again (remove {folder}, then make study SEEDS={seed})"
    info = read_run_file(folder)
    try:
        params = yaml.safe_load((folder / "params.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise _refuse(folder / "params.yaml", f"not readable YAML ({type(error).__name__})", remedy) from None
    if not isinstance(params, dict):
        raise _refuse(folder / "params.yaml", "not a mapping of params", remedy)
    return study.SeedRun(seed, params, load_predictions(folder, seed, info, study.trained_models(params)),
                         info.record)


def load_study(recipe: Recipe, seeds: list):
    """Every seed's results, for the aggregate: (finished runs, {seed: why} of failed ones), each folder
    validated, labels equal across seeds. Refuses a seed listed twice, and seeds with no results yet."""
    study.check_distinct(seeds)
    runs, failed, missing = [], {}, []
    for seed in seeds:
        folder = recipe.seed_dir(seed)
        if (folder / "failed.json").is_file():
            failed[seed] = read_json(folder / "failed.json", f"seed {seed} again (make study SEEDS={seed})")["error"]
        elif (folder / "predictions.csv").is_file():
            runs.append(load_seed(folder, seed))
        else:
            missing.append(seed)
    if missing:
        which, many = seeds_named(missing)
        raise study.StudyError(f"{which} {'have' if many else 'has'} no results in {recipe.seeds_dir}; run them "
                               "first (make study), or pull them from the machine that ran them (git pull)")
    for run in runs[1:]:
        if len(run.predictions["label"]) != len(runs[0].predictions["label"]) or \
                not np.array_equal(run.predictions["label"], runs[0].predictions["label"]):
            raise study.StudyError(f"{recipe.seed_dir(run.seed) / 'predictions.csv'}: its labels differ from seed "
                                   f"{runs[0].seed}'s (another test set, or an edit); run seed {run.seed} again")
    return runs, failed


def refresh_comparisons(recipe: Recipe, runs: list, settings) -> list:
    """Each seed folder's compare.json and headline.json recomputed from its own files (`runs`: the validated
    seeds load_study gave, with their predictions; the folder's metrics and curves) by today's comparison code
    and `settings` (params.yaml's compare section): a seed collected before a change of the rule says what the
    rule says now, without training. Returns the seeds rewritten."""
    rewritten = []
    for run in runs:
        seed, folder = run.seed, recipe.seed_dir(run.seed)
        if not (folder / "compare.json").is_file():
            continue  # a folder without a comparison to recompute
        baseline, contenders = run.compared
        compared = run.models
        train = {m: read_json(folder / f"train_{m}.json") for m in compared}
        curves = {m: [float(row["val_accuracy"]) for row in read_csv_rows(folder / f"{m}_epochs.csv")]
                  for m in compared}
        seed_settings = settings.model_copy(update={"baseline": baseline, "contenders": list(contenders)})
        result = comparison.compare(train, read_json(folder / "evaluate.json"), curves,
                                    run.predictions, seed_settings, seed)
        result, unchanged = results.with_saved_run_id(folder / "compare.json", result)  # an older layout: changed
        if not unchanged:
            with together():
                results.write(folder / "compare.json", result)
                write_json(folder / "headline.json", comparison.headline(result))
            rewritten.append(seed)
    return rewritten


RECIPES_FIGURE = Path("plots/recipes/accuracy_vs_cost.png")


def draw_recipes_figure(titles: dict, recipes=("reference", "tuned_subset", "tuned")):
    """plots/recipes/accuracy_vs_cost.png from every recipe's committed study: each model's accuracy and
    interval against its training CPU-seconds, the median over the study's seeds (a seed trained before
    CPU-seconds were recorded counts its wall seconds times its threads)."""
    points = []
    for name in recipes:
        recipe = Recipe(name)
        if not recipe.study_file.is_file():
            continue
        result = results.load(results.StudyResult, recipe.study_file, "make study")
        for model in result.models:
            seconds = []
            for path in (recipe.seed_dir(seed) / f"train_{model}.json" for seed in result.seeds):
                if path.is_file():  # a seed folder holds it (a made-up one in a test may not)
                    train = read_json(path)
                    seconds.append(train.get("train_cpu_seconds") or train["train_seconds"] * train["threads"])
            if not seconds:
                continue
            accuracy = result.models[model].test_accuracy
            points.append({"recipe": name, "model": model, "accuracy": accuracy.mean, "lower": accuracy.ci[0],
                           "upper": accuracy.ci[1], "seconds": float(np.median(seconds))})
    if not points:
        return
    figure = plots.accuracy_against_cost(points, titles)
    save_figure(RECIPES_FIGURE, figure)
    plots.close(figure)


def write_study(recipe: Recipe, seeds: list, params, tracker) -> "study.StudyResult":
    """metrics/study.json, plots/study/ and the study's MLflow run (or the tuned recipe's), from the seeds'
    committed results: every output checked writable and every seed folder validated first, then all outputs
    written or none."""
    titles = params.titles
    draw = {"accuracy_per_seed": plots.seed_accuracy, "f1_difference": plots.seed_forest,
            "gain_per_seed": plots.seed_gains, "noise_sources": plots.noise_sources}
    outputs = [*(f"{name}.png" for name in draw), *reports.PLOT_TABLES, "SUMMARY.md"]
    check_writable([*(recipe.plots_dir / name for name in outputs), recipe.study_file])
    runs, failed = load_study(recipe, seeds)
    refreshed = refresh_comparisons(recipe, runs, params.compare)
    if refreshed:
        print(f"{seeds_named(refreshed)[0]}: compare.json and headline.json recomputed by today's rule")
    for seed, why in failed.items():
        print(f"warning: seed {seed} failed and is left out of the study: {why}")
    result = study.aggregate(runs, params.compare, failed, max_seeds=recipe.max_planned_seeds)
    summary = reports.study_summary(result, titles)
    try:  # figures that did not change keep the run that first logged them: the committed file stays as it is
        saved, unchanged = results.with_saved_run_id(recipe.study_file, result)
    except PipelineError:  # no study yet, or an unreadable one: this aggregate's run
        saved, unchanged = result, False
    figures = {recipe.plots_dir / f"{name}.png": figure(result, titles) for name, figure in draw.items()}
    run_params = records.study_run_params(result, study.comparable_params(runs[0].params), params.compare)
    title = f"Seed study ({result.k} seeds{', tuned recipe' if recipe.name != 'reference' else ''})"
    with tracking.stage_run(tracker, "study", title, run_params) as run_id:
        with together():
            for path, figure in figures.items():
                save_figure(path, figure)
            for path, rows, fields in reports.plot_rows(result, titles):
                write_csv(recipe.plots_dir / path, rows, fields)
            write_text(recipe.plots_dir / "SUMMARY.md", summary)
            results.write(recipe.study_file, saved if unchanged and saved.mlflow_run_id else
                          results.with_run_id(result, run_id))
        if run_id:
            records.log_study(tracker, run_id, result, figures, summary)
    for figure in figures.values():
        plots.close(figure)
    draw_recipes_figure(titles)
    print("\n".join(reports.study_verdicts(result, titles)).strip())
    return result
