"""What every part of a seed study shares, one floor below its engine: where a recipe's study lives, the seed
folder format (metrics/study/seeds/<seed>/) and its validation, what is current, and the failure ledger. The
tools it runs (dvc, git, the code fingerprint, the CPU kind) are tools.py's.

A seed folder is a seed's finished pipeline: its metrics, per-epoch curves, params, per-image predictions and
run.json (where and on what CPU it ran, the code fingerprint, timings, a checksum of the predictions). It is
current when its code fingerprint and params (but for what may differ between seeds,
study.comparable_params) are the study's: a study cut short, or split over machines, runs only the seeds
that are missing. Every folder is validated before it is aggregated (study_aggregate.load_study).
"""

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import PREDICTIONS_FILE, results, study
from .errors import PipelineError
from .files import read_json, together, write_json, write_text
from .tools import cpu_kind

LOG_DIR = Path("logs/study")  # each seed's whole output, kept when it fails (git-ignored)
SEED_METRICS = ("data", "evaluate", "compare", "headline")  # and each compared model's train_<model>.json
# Each tuned recipe: the model recipes a search chose (search_record.py writes recipe.yaml). `tuned`: the search at full
# data with the same configurations for every model (make tune); `tuned_subset`: the first search, each model its
# own 12 trials on a fifth of the data (kept with its study: the code that ran it is gone).
TUNED_RECIPE_FILES = {"tuned": Path("metrics/tuning/recipe.yaml"),
                      "tuned_subset": Path("metrics/tuning_subset/recipe.yaml")}
PILOT_SEEDS = 5  # a tuned study's first stage: the first five of study.seeds, then the planned k (study.plan)
TUNED_MAX_SEEDS = 10  # a tuned study's plan stops there (a tuned seed costs more; the reference's cap is study's)


@dataclass(frozen=True)
class Recipe:
    """A study's recipe and where its files live: the reference experiment's (params.yaml as it is) or a
    tuned one (each model's recipe overridden by its TUNED_RECIPE_FILES entry)."""

    name: str = "reference"
    overrides: dict = field(default_factory=dict)  # {"models.<name>.recipe.lr": 0.002, ...}: set for every seed

    @property
    def suffix(self) -> str:
        return "" if self.name == "reference" else f"_{self.name}"

    @property
    def seeds_dir(self) -> Path:
        return Path(f"metrics/study{self.suffix}/seeds")

    @property
    def study_file(self) -> Path:
        return Path(f"metrics/study{self.suffix}.json")

    @property
    def sessions_file(self) -> Path:
        """Every `make study` of this recipe that trained a seed: its wall time (sessions.py)."""
        return Path(f"metrics/study{self.suffix}/sessions.json")

    @property
    def plots_dir(self) -> Path:
        return Path(f"plots/study{self.suffix}")

    @property
    def max_planned_seeds(self) -> int:
        """The plan's cap for this recipe's study."""
        return study.MAX_PLANNED_SEEDS if self.name == "reference" else TUNED_MAX_SEEDS

    def seed_dir(self, seed: int) -> Path:
        return self.seeds_dir / str(seed)

    def experiment_name(self, seed: int) -> str:
        return f"study{self.suffix.replace('_', '-')}-seed-{seed}"

    def log_path(self, seed: int) -> Path:
        return LOG_DIR / f"{self.name}-seed-{seed}.log"

    def apply(self, params: dict) -> dict:
        """params.yaml's contents with this recipe's overrides set (as `dvc exp run -S` sets them)."""
        params = json.loads(json.dumps(params))
        for dotted, value in self.overrides.items():
            *parents, key = dotted.split(".")
            node = params
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = value
        return params

    def study_seeds(self, params_seeds: list, named=()) -> list:
        """The seeds this recipe's study aggregates. The reference's: study.seeds (params.yaml declares them;
        seeds named on the command line are a slice to run). A tuned study's: those of its committed aggregate
        (or, before it has one, its pilot: the first PILOT_SEEDS of study.seeds), then any seeds named, so
        that naming the plan's extra seeds extends it and a fresh clone's `make study RECIPE=tuned` trains
        nothing."""
        if self.name == "reference":
            return list(params_seeds)
        if self.study_file.is_file():
            seeds = list(results.load(results.StudyResult, self.study_file, f"make study RECIPE={self.name}").seeds)
        else:
            seeds = list(params_seeds[:PILOT_SEEDS])
        return [*seeds, *(seed for seed in named if seed not in seeds)]

    def set_options(self) -> list:
        return [option for dotted, value in sorted(self.overrides.items())
                for option in ("-S", f"{dotted}={json.dumps(value)}")]


REFERENCE = Recipe()


def load_recipe(name: str, models=()) -> Recipe:
    """`reference`, or a tuned recipe: the model recipes a search chose (TUNED_RECIPE_FILES), one for each of
    `models` (the study's)."""
    if name == "reference":
        return REFERENCE
    if name not in TUNED_RECIPE_FILES:
        raise PipelineError(f"--recipe {name}: unknown; use reference, {', '.join(TUNED_RECIPE_FILES)}")
    path = TUNED_RECIPE_FILES[name]
    remedy = "run `make tune` again" if name == "tuned" else f"restore it (git checkout -- {path})"
    if not path.is_file():
        raise PipelineError(f"{path}: not found; " + ("run `make tune` until its search finishes (it writes each "
                                                      "model's chosen recipe then)" if name == "tuned" else remedy))
    chosen = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(chosen, dict) or not chosen or not all(isinstance(recipe, dict) for recipe in chosen.values()):
        raise PipelineError(f"{path}: expected a recipe for each tuned model; {remedy}")
    missing = [model for model in models if model not in chosen]
    if missing:
        raise PipelineError(f"{path}: no chosen recipe for {', '.join(missing)}: " + (
            f"its search has not finished (make tune MODELS={','.join(missing)} "
            "goes on where it stopped; tuning.json says how far it is)" if name == "tuned" else remedy))
    return Recipe(name, {f"models.{model}.recipe.{key}": value
                         for model, recipe in chosen.items() for key, value in recipe.items()})


# ------------------------------------------------------------------------------ seed folders

def seeds_named(seeds) -> tuple[str, bool]:
    """How a message names seeds ("seed 4", "seeds 4, 5"), and whether that is more than one."""
    seeds = list(seeds)
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}", len(seeds) > 1


def results_current(folder: Path, params: dict, fingerprint: str) -> bool:
    """The seed has results, made with these params (but for what may differ between seeds) and this code."""
    if not (folder / "run.json").is_file() or not (folder / "predictions.csv").is_file():
        return False
    try:
        saved, saved_params = read_run_file(folder), yaml.safe_load((folder / "params.yaml").read_text())
    except (PipelineError, OSError, yaml.YAMLError):
        return False  # unreadable: not a result to keep (load_study says which file, when it aggregates)
    return (isinstance(saved_params, dict) and saved.code == fingerprint
            and study.comparable_params(saved_params) == study.comparable_params(params))


def read_run_file(folder: Path) -> results.SeedRunFile:
    """A seed folder's run.json (the folder is named after its seed), validated: one line naming the file and
    the seed to run again."""
    seed, path = folder.name, folder / "run.json"
    return results.parse(results.SeedRunFile, read_json(path, f"seed {seed} again (make study SEEDS={seed})"), path,
                         f"seed {seed} (make study SEEDS={seed})")


def results_exist(folder: Path) -> bool:
    """The seed ran, here or on a machine whose results were pulled: it has predictions or a recorded failure."""
    return (folder / "failed.json").is_file() or (folder / "predictions.csv").is_file()


def seed_files(seed: int, read, fingerprint: str, source: dict) -> dict:
    """The files of a seed's result folder, {name: text}, from a finished run of its pipeline: `read(path)` gives
    a file of that run's workspace as text; run.json (results.SeedRunFile) records `source` (experiment, rev,
    worker: where it ran), the code fingerprint, the CPU kind, threads and timings, and a checksum of the
    predictions kept."""
    compared = study.trained_models(yaml.safe_load(read("params.yaml")))
    rows = [{"image": row["image"], "label": row["label"], **{m: row[f"{m}_predicted"] for m in compared}}
            for row in csv.DictReader(io.StringIO(read(PREDICTIONS_FILE)))]
    predictions = io.StringIO(newline="")
    writer = csv.DictWriter(predictions, fieldnames=prediction_fields(compared))  # as files.write_csv writes it
    writer.writeheader()
    writer.writerows(rows)
    train = {m: json.loads(read(f"metrics/train/{m}.json")) for m in compared}
    files = {f"{metric}.json": read(f"metrics/{metric}.json") for metric in SEED_METRICS}
    files.update({f"train_{m}.json": read(f"metrics/train/{m}.json") for m in compared})
    files.update({f"{model}_epochs.csv": read(f"plots/train/{model}_epochs.csv") for model in compared})
    files.update({"predictions.csv": predictions.getvalue(), "params.yaml": read("params.yaml")})
    kind = cpu_kind()
    files["run.json"] = results.to_json(results.SeedRunFile(
        seed=seed, experiment=source["experiment"], rev=source["rev"], worker=source["worker"], baseline=None,
        code=fingerprint, cpu=kind["name"], cpu_kind=results.CpuKind(**kind),
        threads={m: train[m]["threads"] for m in compared},
        train_seconds={m: train[m]["train_seconds"] for m in compared},
        predictions_sha256=hashlib.sha256(predictions.getvalue().encode("utf-8")).hexdigest(),
        mlflow_run_ids={**{m: train[m]["mlflow_run_id"] for m in compared},
                        "compare": json.loads(read("metrics/compare.json")).get("mlflow_run_id")}))
    return files


def prediction_fields(compared) -> list:
    """A seed folder's predictions.csv header: the image, its label, each compared model's class (the contenders,
    then the baseline)."""
    return ["image", "label", *compared]


def write_seed_folder(folder: Path, files: dict):
    """Every file of a seed's folder, or none; a failure recorded before is cleared."""
    with together():
        for name, text in files.items():
            write_text(folder / name, text)
    (folder / "failed.json").unlink(missing_ok=True)


def stage_error(output: str) -> str:
    """A failed run's reason: the stage's own `error:` line, else DVC's last ERROR line."""
    lines = output.splitlines()
    ours = [line for line in lines if line.startswith("error: ")]
    theirs = [line for line in lines if line.startswith("ERROR")]
    return (ours or theirs or ["failed (no error line in its output)"])[-1].strip()


def record_failure(recipe: Recipe, seed: int, output: str, keep_result: bool) -> str:
    """The failure ledger: the whole output in the seed's log; failed.json holds the stage's own error line and
    names the log (unless `keep_result`: the folder holds a current result, left as it is). Returns why."""
    log = recipe.log_path(seed)
    write_text(log, output)
    why = f"{stage_error(output)} (whole output: {log})"
    if not keep_result:
        write_json(recipe.seed_dir(seed) / "failed.json", {"seed": seed, "error": why, "log": str(log)})
    return why
