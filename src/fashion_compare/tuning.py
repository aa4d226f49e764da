"""Tuning each model's recipe with the same number of trials: a seeded random search (Optuna's RandomSampler) over the
one search space of params.yaml's `tune`, the same number of trials per model at the same reduced fidelity.

A trial trains one model with one recipe on a stratified subset of the training split (`tune.subset` images,
the same for every trial) and scores on the whole validation split; the test split is never opened. Trials
are Dask tasks on the study's engine (engine.py: two at a time here, more on a cluster whose workers see the
prepared data at the same path). Only this driver writes the Optuna storage (ask and tell: an embedded SQLite
file by default, metrics/tuning/optuna.db) and MLflow (each trial a child of one tuning run). A trial that
raises is told FAIL with its reason, and the search goes on. A killed `make tune` resumes: trials left RUNNING
are told FAIL ("interrupted") and their params asked again first; trial n's params depend only on
(tune.seed, model, n), so a resumed search draws what an uninterrupted one would.

What is committed, after every trial: metrics/tuning/<model>_trials.csv (every trial: params, validation
accuracy, training CPU-seconds, code fingerprint, CPU kind), metrics/tuning/tuning.json (each model's budget
and choice) and, when both models have their trials, metrics/tuning/recipe.yaml (each model's chosen recipe,
read by `make study RECIPE=tuned`) and plots/tuning/expected_best.png (Dodge et al. 2019: the expected best
validation accuracy after n trials, and against CPU-hours, with its spread).
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field, ValidationError, model_validator

from .errors import ParamsError, first_line
from .params import MAX_EPOCHS, Augment, Bool, Float, Int, Schedule, Strict, Subset, format_error

TUNING_DIR = Path("metrics/tuning")
PLOTS_DIR = Path("plots/tuning")
STORAGE_FILE = TUNING_DIR / "optuna.db"
INTERRUPTED = "interrupted (the driver stopped); its params are asked again first"
TRIAL_FIELDS = ["number", "state", "val_accuracy", "best_epoch", "lr", "weight_decay", "batch_size", "epochs",
                "schedule", "augment", "train_seconds", "train_cpu_seconds", "code", "cpu", "fail_reason"]


class FloatRange(Strict):
    """A search range of a float knob, drawn uniformly (on a log scale with `log`)."""

    low: Float = Field(gt=0)
    high: Float = Field(gt=0)
    log: Bool = False

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.low < self.high:
            raise ValueError(f"empty or inverted range: low {self.low:g} must be below high {self.high:g}")
        return self


class SearchSpace(Strict):
    """The recipe knobs a tuning draws, the same space for every model."""

    lr: FloatRange
    weight_decay: list[Annotated[Float, Field(ge=0, lt=1)]] = Field(min_length=1)
    batch_size: list[Annotated[Int, Field(gt=0)]] = Field(min_length=1)
    epochs: list[Annotated[Int, Field(gt=0, le=MAX_EPOCHS)]] = Field(min_length=1)
    schedule: list[Schedule] = Field(min_length=1)
    augment: list[Augment] = Field(min_length=1)


class TuneParams(Strict):
    """params.yaml's `tune`: a seeded random search of each compared model's recipe, the same number of trials
    for each, each model drawing its own configurations."""

    trials: Int = Field(12, ge=1, description="trials per model")
    seed: Int = Field(0, ge=0, description="seeds the sampler; each trial trains with the top-level seed")
    subset: Subset = Field(9000, description="training images per trial, stratified from the training split;"
                                             " 0 = all of it")
    storage: str | None = Field(None, min_length=1, description="Optuna storage URL; null = the SQLite file")
    space: SearchSpace


def tune_params(params, path="params.yaml") -> TuneParams:
    """params.yaml's `tune` section, validated (one line naming the key when it is not right)."""
    if params.tune is None:
        raise ParamsError(f"{path}: tune: missing section (the search's trials, subset and space)")
    try:
        return TuneParams.model_validate(params.tune)
    except ValidationError as error:
        raise ParamsError(format_error(path, error, prefix="tune")) from None


@dataclass(frozen=True)
class TrialTask:
    """One trial, for a worker: the model, its recipe (ModelParams fields) and the data it may use."""

    model: str
    number: int
    recipe: dict
    params_file: str
    data_dir: str
    subset: int
    subset_seed: int
    threads: int | None
    stop_event: str


@dataclass(frozen=True)
class TrialOutcome:
    """A trial's result: the best validation accuracy and its curve, the cost, or why it failed."""

    val_accuracy: float = 0.0
    best_epoch: int = 0
    curve: list = field(default_factory=list)  # validation accuracy per epoch
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    cpu: str = ""
    error: str = ""


def recipe_from(sampled: dict) -> dict:
    """A recipe (params.RecipeParams) from a trial's params: AdamW when it has weight decay, else Adam; the step
    schedule decays once, half way (StepLR)."""
    recipe = {"optimizer": "adamw" if sampled["weight_decay"] > 0 else "adam", **sampled}
    if recipe["schedule"] == "step":
        recipe["step_size"] = max(1, recipe["epochs"] // 2)
    return recipe


def suggest(trial, space) -> dict:
    """Draw a trial's params from the search space (params.SearchSpace)."""
    sampled = {"lr": trial.suggest_float("lr", space.lr.low, space.lr.high, log=space.lr.log)}
    for name in ("weight_decay", "batch_size", "epochs", "schedule", "augment"):
        sampled[name] = trial.suggest_categorical(name, list(getattr(space, name)))
    return sampled


def run_trial(task: TrialTask) -> TrialOutcome:
    """On a worker: train the model with the trial's recipe; the validation split scores it."""
    import torch

    from . import data, models, training
    from .params import RecipeParams, load_params, train_config
    from .tools import cpu_kind

    if task.threads:
        torch.set_num_threads(task.threads)
    training.keep_freed_memory()
    try:
        params = load_params(task.params_file)
        spec = params.models[task.model]
        recipe = RecipeParams.model_validate({**spec.recipe.model_dump(), **task.recipe})
        models_now = {**params.models, task.model: spec.model_copy(update={"recipe": recipe})}
        config = train_config(params.model_copy(update={"models": models_now}), task.model)
        train_set = data.load_split(task.data_dir, "train")
        index = data.stratified_indices(train_set["labels"].numpy(), task.subset, task.subset_seed)
        train_set = {key: tensor[index] for key, tensor in train_set.items()}
        val_set = data.load_split(task.data_dir, "val")
        training.seed_everything(config.seed)
        model = models.build_model(config.architecture, config.options)
        result = training.train(model, train_set, val_set, config, training.select_device(config.device), quiet=True)
    except Exception as error:  # noqa: BLE001 - diverged, out of memory, a bad recipe: the trial fails, the search goes on
        return TrialOutcome(error=first_line(error, 240), cpu=cpu_kind()["name"])
    return TrialOutcome(result.best_val_accuracy, result.best_epoch, [r.val_accuracy for r in result.epochs],
                        result.train_seconds, result.train_cpu_seconds, cpu_kind()["name"])


def expected_best(values, trials: int) -> tuple[float, float]:
    """Expected maximum of `trials` draws (with replacement) from the empirical distribution of `values`, and
    its standard deviation (Dodge et al. 2019, "Show Your Work")."""
    ordered = np.sort(np.asarray(values, dtype=float))
    count = len(ordered)
    below = (np.arange(1, count + 1) / count) ** trials - (np.arange(count) / count) ** trials
    mean = float(np.sum(below * ordered))
    return mean, float(np.sqrt(max(0.0, np.sum(below * ordered ** 2) - mean ** 2)))


def sampler_seed(tune_seed: int, model_index: int, number: int) -> int:
    return int(np.random.SeedSequence([tune_seed, model_index, number]).generate_state(1)[0])


def trial_row(trial) -> dict:
    attrs = trial.user_attrs
    return {"number": trial.number, "state": trial.state.name,
            "val_accuracy": trial.value if trial.state.name == "COMPLETE" else "",
            "best_epoch": attrs.get("best_epoch", ""),
            **{name: trial.params.get(name, "") for name in TRIAL_FIELDS[4:10]},
            **{name: attrs.get(name, "") for name in TRIAL_FIELDS[10:]}}


def finished(study) -> list:
    """The trials that count against the budget: complete, or failed for a reason of their own."""
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" or
            (t.state.name == "FAIL" and t.user_attrs.get("fail_reason") != INTERRUPTED)]


def search_summary(studies: dict, trials: int) -> dict:
    """tuning.json: per model, the budget used (trials, CPU-hours) and the chosen trial; the expected best
    validation accuracy after 1..n trials."""
    result = {}
    for model, study in studies.items():
        done = finished(study)
        complete = [t for t in done if t.state.name == "COMPLETE"]
        cpu_hours = sum(t.user_attrs.get("train_cpu_seconds", 0.0) for t in done) / 3600
        best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
        values = [t.value for t in complete]
        result[model] = {"trials": len(done), "complete": len(complete), "budget_trials": trials,
                         "cpu_hours": cpu_hours, "cpu_hours_per_trial": cpu_hours / len(done) if done else None,
                         "chosen_trial": best.number if best else None,
                         "best_val_accuracy": best.value if best else None,
                         "chosen_recipe": recipe_from(best.params) if best else None,
                         "expected_best": [dict(zip(("n", "mean", "sd"), (n, *expected_best(values, n))))
                                           for n in range(1, len(values) + 1)] if values else []}
    return result


def write_results(studies: dict, trials: int, settings: dict, titles: dict):
    """The committed files of the search so far (each write atomic)."""
    from .files import write_csv, write_json, write_text

    for model, study in studies.items():
        rows = [trial_row(t) for t in study.get_trials(deepcopy=False) if t.state.name != "WAITING"]
        write_csv(TUNING_DIR / f"{model}_trials.csv", rows, TRIAL_FIELDS)
    result = search_summary(studies, trials)
    write_json(TUNING_DIR / "tuning.json", {"settings": settings, "models": result})
    if all(result[m]["trials"] >= trials and result[m]["chosen_recipe"] for m in studies):
        import yaml

        write_text(TUNING_DIR / "recipe.yaml", "# make tune's choice per model (metrics/tuning/tuning.json): the "
                   "recipe make study RECIPE=tuned trains\n" + yaml.safe_dump(
                       {m: result[m]["chosen_recipe"] for m in studies}, sort_keys=True))
        from . import plots
        from .files import save_figure

        figure = plots.expected_best_figure(result, titles)
        save_figure(PLOTS_DIR / "expected_best.png", figure)
        plots.close(figure)
    return result


class TrialLogger:
    """Tells Optuna each trial's end, logs it to MLflow as a child of the tuning run, rewrites the results."""

    def __init__(self, studies, asked, tracker, parent_run_id, trials, settings, code, titles):
        self.studies, self.asked, self.tracker, self.parent = studies, asked, tracker, parent_run_id
        self.titles = titles
        self.trials, self.settings, self.code = trials, settings, code

    def done(self, task: TrialTask, outcome):
        study = self.studies[task.model]
        if isinstance(outcome, BaseException):  # its worker kept dying
            outcome = TrialOutcome(error=f"{type(outcome).__name__}: {first_line(outcome, 200)}")
        attrs = {**{k: v for k, v in asdict(outcome).items() if k not in ("val_accuracy", "error")},
                 "code": self.code, **({"fail_reason": outcome.error} if outcome.error else {})}
        trial = self.asked[task.model, task.number]
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if outcome.error:
            study.tell(trial, state=_state("FAIL"))
            print(f"{self.titles[task.model]} trial {task.number}: FAILED: {outcome.error}", flush=True)
        else:
            study.tell(trial, outcome.val_accuracy)
            print(f"{self.titles[task.model]} trial {task.number}: validation accuracy {outcome.val_accuracy:.4f} "
                  f"({outcome.train_cpu_seconds / 60:.1f} CPU-min) {task.recipe}", flush=True)
        self.log(task, outcome)
        write_results(self.studies, self.trials, self.settings, self.titles)

    def log(self, task: TrialTask, outcome: TrialOutcome):
        if self.tracker is None:
            return
        from .tracking import run_tags

        run_id = self.tracker.start_run(f"{self.titles[task.model]} trial {task.number}", task.recipe, {
            **run_tags("tune"), "mlflow.parentRunId": self.parent, "model": task.model, "trial": str(task.number)})
        self.tracker.log_metric_series(run_id, [("val/accuracy", value, epoch)
                                                for epoch, value in enumerate(outcome.curve, start=1)])
        self.tracker.log_metrics(run_id, {"best_val_accuracy": outcome.val_accuracy,
                                          "train_cpu_seconds": outcome.train_cpu_seconds})
        if outcome.error:
            self.tracker.set_tags(run_id, {"fail_reason": outcome.error})
        self.tracker.end_run(run_id, "FAILED" if outcome.error else "FINISHED")


def _state(name):
    from optuna.trial import TrialState

    return TrialState[name]


def open_studies(storage: str, space_json: str, models) -> dict:
    """Each model's Optuna study in `storage` (made, or loaded to go on); one of another search space is refused."""
    import optuna

    from .errors import PipelineError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {}
    for model in models:
        study = optuna.create_study(study_name=f"{model}-recipe", storage=storage, direction="maximize",
                                    load_if_exists=True)
        saved = study.user_attrs.get("space")
        if saved is None:
            study.set_user_attr("space", space_json)
        elif saved != space_json:
            raise PipelineError(f"{storage}: holds a search of another space for {model} (tune.space changed); move "
                                "it aside (or set tune.storage) to start a new search")
        for frozen in study.get_trials(deepcopy=False, states=(_state("RUNNING"),)):  # a killed driver's
            trial = optuna.trial.Trial(study, frozen._trial_id)
            trial.set_user_attr("fail_reason", INTERRUPTED)
            study.tell(trial, state=_state("FAIL"))
            study.enqueue_trial(frozen.params)
        studies[model] = study
    return studies


def ask(studies: dict, trials: int, tune_seed: int, space) -> list:
    """The trials still to run, as (model, Trial, sampled params), the two models taking turns."""
    from optuna.samplers import RandomSampler

    asked = {model: [] for model in studies}
    for index, (model, study) in enumerate(studies.items()):
        for _ in range(trials - len(finished(study))):
            study.sampler = RandomSampler(seed=sampler_seed(tune_seed, index, len(study.get_trials(deepcopy=False))))
            trial = study.ask()
            asked[model].append((model, trial, suggest(trial, space)))
    longest = max(map(len, asked.values()))
    return [items[i] for i in range(longest) for items in asked.values() if i < len(items)]


def tune(params, params_file: str, data_dir: str, jobs: int, address: str | None, tracker) -> dict:
    """The search (see the module's docstring); returns tuning.json's per-model summary."""
    from . import engine, tracking
    from .tools import code_fingerprint

    settings = tune_params(params, params_file)
    models, titles = params.compare.models, {m: params.title(m) for m in params.compare.models}
    storage = settings.storage or f"sqlite:///{STORAGE_FILE.resolve()}"
    STORAGE_FILE.parent.mkdir(parents=True, exist_ok=True)
    studies = open_studies(storage, settings.space.model_dump_json(), models)
    todo = ask(studies, settings.trials, settings.seed, settings.space)
    record = {"trials": settings.trials, "subset": settings.subset, "seed": settings.seed, "train_seed": params.seed,
              "space": settings.space.model_dump(), "storage": settings.storage or str(STORAGE_FILE)}
    if not todo:
        print(f"tuning: {settings.trials} trials per model done already ({TUNING_DIR})")
        return write_results(studies, settings.trials, record, titles)
    threads = engine.local_task_settings(jobs)["threads"] if address is None else None
    stop = f"fashion-tune-stop-{os.getpid()}"
    tasks = [TrialTask(model, trial.number, recipe_from(sampled), str(Path(params_file).resolve()),
                       str(Path(data_dir).resolve()), settings.subset, settings.seed, threads, stop)
             for model, trial, sampled in todo]
    counts = ", ".join(f"{titles[m]} {sum(t.model == m for t in tasks)}" for m in models)
    print(f"tuning: {len(tasks)} trials to run ({counts}), "
          f"{f'{jobs} at a time' if address is None else 'on ' + address}", flush=True)
    run_params = {"trials_per_model": settings.trials, "subset": settings.subset, "sampler_seed": settings.seed,
                  "space": json.dumps(settings.space.model_dump())}
    with tracking.stage_run(tracker, "tune", f"Tuning ({settings.trials} trials per model)", run_params) as run_id:
        asked = {(model, trial.number): trial for model, trial, _ in todo}
        code = code_fingerprint(root=Path(__file__).resolve().parents[2])  # the checkout of this package
        logger = TrialLogger(studies, asked, tracker, run_id, settings.trials, record, code, titles)
        with engine.open_cluster(address, jobs) as client:
            engine.run_tasks(client, run_trial, tasks, logger.done, key=lambda t: f"tune-{t.model}-{t.number}")
    return write_results(studies, settings.trials, record, titles)
