"""A seed study's driver: the seeds without current results go to the engine (engine.py: Dask tasks, on this
machine or a cluster), each seed's folder is written as soon as it comes back, and the aggregate
(metrics/study.json, plots/study/, an MLflow run) is made from the committed folders (seed_folders.py).
The statistics are in study.py.
"""

import os
import time
from pathlib import Path

from . import engine, seed_task, study
from .errors import PipelineError, first_line
from .files import read_json, together, write_json, write_text
from .seed_folders import (
    Recipe,
    load_study,
    read_run_file,
    record_failure,
    results_current,
    seeds_named,
    write_seed_folder,
)
from .tools import code_fingerprint, git


def check_repository_root(params_path: str):
    if not Path("dvc.yaml").is_file() or not Path(params_path).is_file():
        raise PipelineError(f"{Path.cwd()}: no dvc.yaml or {params_path} here; run the study from the repository "
                            "root (where dvc.yaml is)")


def check_arguments(seeds: list, jobs: int):
    """Before any work: seeds listed once each and not negative, at least one job."""
    study.check_distinct(seeds, "--seeds")
    if any(seed < 0 for seed in seeds):
        raise PipelineError(f"--seeds: {min(seeds)} is negative; a seed is 0 or more")
    if jobs < 1:
        raise PipelineError(f"--jobs {jobs}: at least 1 seed at a time")


def check_committed():
    if git("status", "--porcelain", "--untracked-files=no", "--", "src", "stages", "dvc.yaml", "params.yaml"):
        raise PipelineError("src/, stages/, dvc.yaml or params.yaml has uncommitted changes; commit them first "
                            "(a study's experiments run the committed code, with only the seed changed)")


def check_cluster(client, address: str, commit: str, params: dict) -> tuple[str, str | None]:
    """What a cluster's tasks need, before any of them trains: the commit on the shared git remote, a shared
    MLflow server (not a file of this machine), a default DVC remote, workers offering seed=1. Returns (the git
    remote, the MLflow URI)."""
    from .tools import dvc

    try:
        remote = git("remote", "get-url", "origin").strip()
        git("fetch", "--quiet", "origin")
    except Exception:  # noqa: BLE001 - no origin, or it cannot be reached
        raise PipelineError("a cluster study needs the shared git remote `origin` (workers clone the study's commit "
                            "from it); add it, push, and run again") from None
    if not git("branch", "--remotes", "--contains", commit).strip():
        raise PipelineError(f"commit {commit[:12]} is not on origin ({remote}); push it first (git push): workers "
                            "clone the study's commit from there")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if (params.get("tracking") or {}).get("enabled", True):
        if not uri or uri.split(":", 1)[0] in ("sqlite", "file") or "://" not in uri:
            raise PipelineError(f"a cluster study logs to a shared MLflow server: set MLFLOW_TRACKING_URI to it "
                                f"(now {uri or 'unset'}; a file store would stay in each worker's scratch folder), "
                                "or tracking.enabled: false")
    if not dvc("remote", "default", check=False).stdout.strip():
        raise PipelineError("a cluster study needs a default DVC remote that every worker reaches (dvc remote "
                            "add -d <name> <url>, committed): workers fetch the run cache and push outputs there")
    if not engine.seed_workers(client):
        raise PipelineError(f"Dask scheduler at {address}: no worker offers the resource seed=1; start "
                            "workers with `dask worker <address> --resources seed=1`")
    return remote, uri


class SeedLedger:
    """What the driver records as seeds come back: each folder written at once, failures kept with their log."""

    def __init__(self, recipe: Recipe, params: dict, fingerprint: str):
        self.recipe, self.params, self.fingerprint = recipe, params, fingerprint
        self.failed, self.started = {}, time.perf_counter()

    def done(self, task: seed_task.SeedTask, outcome):
        seed = task.seed
        if isinstance(outcome, BaseException):
            self.fail(seed, f"error: seed {seed}: {first_line(outcome, 240)}")
        elif not outcome.ok:
            self.fail(seed, outcome.log + f"\n{outcome.error}\n")
        elif outcome.fingerprint != self.fingerprint:
            self.fail(seed, f"error: seed {seed} ran code {outcome.fingerprint} on {outcome.worker}, not this "
                            f"study's {self.fingerprint}")
        else:
            write_seed_folder(self.recipe.seed_dir(seed), outcome.files)
            seed_task.forget_scratch(task)
            top = read_json(self.recipe.seed_dir(seed) / "headline.json")
            accuracy = ", ".join(f"{m} {v['test_accuracy']:.4f}" for m, v in top["models"].items())
            gains = ", ".join(f"{m} {100 * v['accuracy_gain']:+.2f}" for m, v in top["contenders"].items())
            print(f"seed {seed}: finished on {outcome.worker} after {(time.perf_counter() - self.started) / 60:.1f} "
                  f"min: test accuracy {accuracy}; gain over {top['baseline']}, points: {gains}", flush=True)

    def fail(self, seed: int, output: str):
        current = results_current(self.recipe.seed_dir(seed), self.params, self.fingerprint)
        self.failed[seed] = record_failure(self.recipe, seed, output, keep_result=current)
        print(f"seed {seed}: FAILED: {self.failed[seed]}", flush=True)


def stale_seeds(recipe: Recipe, seeds: list, fingerprint: str) -> dict:
    """{seed: the code it ran} of the seeds whose committed results another code made (the code fingerprint)."""
    stale = {}
    for seed in seeds:
        folder = recipe.seed_dir(seed)
        if (folder / "run.json").is_file() and (folder / "predictions.csv").is_file():
            code = read_run_file(folder).code
            if code != fingerprint:
                stale[seed] = code
    return stale


def run_seeds(recipe: Recipe, seeds: list, jobs: int, params: dict, address: str | None = None,
              rerun_stale=False) -> dict:
    """Run the seeds that have no current results as Dask tasks (a LocalCluster of `jobs` workers, or the
    cluster at `address`); returns {seed: why} for those that failed. Seeds whose results another code made
    are stale: said in one line and left as they are, unless `rerun_stale`."""
    check_arguments(seeds, jobs)
    fingerprint, applied = code_fingerprint(), recipe.apply(params)
    stale = stale_seeds(recipe, seeds, fingerprint)
    if stale and not rerun_stale:
        codes = ", ".join(sorted(set(map(str, stale.values()))))
        print(f"{recipe.study_file}: stale: {seeds_named(stale)[0]} ran code {codes}, this checkout's is "
              f"{fingerprint}; its figures stay those of that code until `make study RECIPE={recipe.name} "
              "RERUN_STALE=1` trains them again", flush=True)
    todo = [seed for seed in seeds if not results_current(recipe.seed_dir(seed), applied, fingerprint)
            and (rerun_stale or seed not in stale)]
    for seed in sorted(set(seeds) - set(todo)):
        (recipe.seed_dir(seed) / "failed.json").unlink(missing_ok=True)
        print(f"seed {seed}: done already ({recipe.seed_dir(seed)})")
    if not todo:
        return {}
    check_committed()
    commit = git("rev-parse", "HEAD").strip()
    ledger = SeedLedger(recipe, applied, fingerprint)
    with engine.open_cluster(address, min(jobs, len(todo))) as client:
        if address is None:
            settings = engine.local_task_settings(min(jobs, len(todo)))
        else:
            remote, uri = check_cluster(client, address, commit, params)
            settings = {"origin": remote, "workspace": None, "mlflow_uri": uri, "threads": None}
        stop = f"fashion-study-stop-{commit[:12]}-{os.getpid()}"
        tasks = [seed_task.SeedTask(seed, recipe, commit, stop_event=stop, **settings) for seed in todo]
        print(f"running {seeds_named(todo)[0]}, {min(jobs, len(todo)) if address is None else 'on'} "
              f"{'at a time' if address is None else address}", flush=True)
        try:
            engine.run_tasks(client, seed_task.run_seed_task, tasks, ledger.done,
                             key=lambda task: recipe.experiment_name(task.seed))
        except KeyboardInterrupt:
            left = [seed for seed in todo if seed not in ledger.failed and
                    not results_current(recipe.seed_dir(seed), applied, fingerprint)]
            print(f"interrupted: finished seeds kept in {recipe.seeds_dir}; "
                  f"{seeds_named(left)[0] if left else 'none'} left, each to resume from its last finished epoch "
                  "at the next make study", flush=True)
            raise
    return ledger.failed


def refresh_comparisons(recipe: Recipe, runs: list, settings) -> list:
    """Each seed folder's compare.json and headline.json recomputed from its own files (`runs`: the validated
    seeds load_study gave, with their predictions; the folder's metrics and curves) by today's comparison code
    and `settings` (params.yaml's compare section): a seed collected before a change of the rule says what the
    rule says now, without training. Returns the seeds rewritten."""
    from . import comparison, results
    from .files import read_csv_rows

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


def draw_recipes_figure(titles: dict, recipes=("reference", "tuned")):
    """plots/recipes/accuracy_vs_cost.png from every recipe's committed study: each model's accuracy and
    interval against its training CPU-seconds, the median over the study's seeds (a seed trained before
    CPU-seconds were recorded counts its wall seconds times its threads)."""
    import numpy as np

    from . import plots, results
    from .files import save_figure

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
    from . import plots, records, reports, results, tracking
    from .files import check_writable, save_figure, write_csv

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
