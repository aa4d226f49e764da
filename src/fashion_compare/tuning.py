"""The search for each model's recipe: the same configurations for every model, at full data, ranked by successive
halving over epochs.

- The same configurations: trial i of every searched model trains the same recipe (a copy of another model's
  trial i where the storage has one, else Optuna's RandomSampler seeded by (tune.seed, i) alone: the model is not
  a dimension of the search, and a model searched later gets what the others drew). A space may only widen
  (a choice at an edge): the trials so far stay, the next are drawn from the wider one (search.open_studies).
  The space (params.yaml `tune.space`): the optimizer (AdamW, or SGD with Nesterov momentum, each
  with its own log-uniform lr range), log-uniform weight decay, batch size, schedule (cosine, step, one-cycle,
  each over the maximum epochs), augmentation and label smoothing.
- Full data, validation only: a trial trains on the whole training split and is scored on the validation split
  after every epoch; the test split is never opened.
- Multi-fidelity by epochs: at each rung (tune.min_epochs x reduction_factor^k, up to tune.max_epochs) Optuna's
  SuccessiveHalvingPruner (asynchronous successive halving) keeps a trial if it is in the top 1/reduction_factor
  of the trials that reached that rung before it; a kept trial resumes from its saved state (bit-exact,
  training.ResumeFile) up to the next rung. The driver asks the pruner in trial order at each rung (trial i's
  decision waits for those of trials 0..i-1 there), so the outcome does not depend on how many workers ran it
  or on the order their tasks ended, and the search of the first n configurations is the first n trials of
  this one: the curves rest on that. A trial's value: its best validation accuracy, once it reached max_epochs.
- Each rung of a trial is a Dask task on the study's engine (engine.py: two at a time here, more on a cluster);
  only the driver writes the Optuna storage (ask and tell) and MLflow. A killed `make tune` goes on where it
  stopped: a trial resumes from its last saved epoch (in .resume/tune/ on the driver's machine; a cluster
  worker elsewhere trains the trial's epochs again, to the same result on the same CPU kind).
- Converged: once every trial of a model is told, its chosen recipe trains for twice max_epochs (the same
  seed, the schedule over the longer run); the validation accuracy it gains is committed
  (metrics/tuning/headroom.json). Above tune.headroom_gain: raise max_epochs and search again.

Committed after every decision (search_record.py): metrics/tuning/<model>_trials.csv, tuning.json (per model:
configurations, epochs and CPU-hours spent, the choice, the search's best against configurations and CPU-hours
with a bootstrap band; every model searched in the storage, whichever models this run searches), recipe.yaml
(the chosen recipe of each model whose search has finished: every configuration decided, the convergence check
passed; what `make study RECIPE=tuned` trains), headroom.json, sessions.json (each `make tune` that trained: its
wall time; sessions.py) and plots/tuning/search.png.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from .errors import ParamsError, first_line
from .params import MAX_EPOCHS, Augment, Float, Int, ModelName, Schedule, Strict, format_error

TUNING_DIR = Path("metrics/tuning")
STORAGE_FILE = TUNING_DIR / "optuna.db"
STATE_DIR = Path(".resume/tune")  # each running trial's state between its rungs (git-ignored)


class LogRange(Strict):
    """A float knob's range, drawn log-uniformly."""

    low: Float = Field(gt=0)
    high: Float = Field(gt=0)

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.low < self.high:
            raise ValueError(f"empty or inverted range: low {self.low:g} must be below high {self.high:g}")
        return self

    def position(self, value: float) -> float:
        """Where `value` lies in the range on the log scale: 0 at low, 1 at high."""
        return math.log(value / self.low) / math.log(self.high / self.low)


class OptimizerSpace(Strict):
    lr: LogRange


class SearchSpace(Strict):
    """The recipe knobs a trial draws, the same space (and the same draws) for every model."""

    optimizer: dict[Literal["adamw", "sgd"], OptimizerSpace] = Field(min_length=1)
    weight_decay: LogRange
    batch_size: list[Annotated[Int, Field(gt=0)]] = Field(min_length=1)
    schedule: list[Schedule] = Field(min_length=1)
    augment: list[Augment] = Field(min_length=1)
    label_smoothing: list[Annotated[Float, Field(ge=0, lt=1)]] = Field(min_length=1)


class TuneParams(Strict):
    """params.yaml's `tune` (see the module's docstring)."""

    configurations: Int = Field(40, ge=1, description="trials per model, trial i the same recipe for each")
    seed: Int = Field(0, ge=0, description="the configurations' stream; every trial trains with the top-level seed")
    min_epochs: Int = Field(1, ge=1, description="the first rung")
    max_epochs: Int = Field(27, ge=2, le=MAX_EPOCHS, description="the last rung; every schedule runs over it")
    reduction_factor: Int = Field(3, ge=2, description="the top 1/reduction_factor at a rung goes on")
    headroom_gain: Float = Field(0.002, gt=0, lt=1, description="converged: twice max_epochs gains at most this")
    models: list[ModelName] | None = Field(None, description="the models searched; null = compare's")
    storage: str | None = Field(None, min_length=1, description="Optuna storage URL; null = the SQLite file")
    space: SearchSpace

    @model_validator(mode="after")
    def _rungs_reach_the_maximum(self):
        if self.rungs[-1] != self.max_epochs:
            raise ValueError(f"max_epochs {self.max_epochs} is not min_epochs {self.min_epochs} times a power of "
                             f"reduction_factor {self.reduction_factor} (the rungs would be {self.rungs})")
        return self

    @property
    def rungs(self) -> list[int]:
        rungs = [self.min_epochs]
        while rungs[-1] * self.reduction_factor <= self.max_epochs:
            rungs.append(rungs[-1] * self.reduction_factor)
        return rungs


def tune_params(params, path="params.yaml") -> TuneParams:
    """params.yaml's `tune` section, validated (one line naming the key when it is not right)."""
    if params.tune is None:
        raise ParamsError(f"{path}: tune: missing section (the search's configurations, rungs and space)")
    try:
        settings = TuneParams.model_validate(params.tune)
    except ValidationError as error:
        raise ParamsError(format_error(path, error, prefix="tune")) from None
    for model in settings.models or ():
        if model not in params.models:
            raise ParamsError(f"{path}: tune.models: '{model}' is not a model declared in models")
    return settings


def searched_models(params, settings: TuneParams) -> list[str]:
    return list(settings.models or params.compare.models)


def configuration_seed(tune_seed: int, number: int) -> int:
    return int(np.random.SeedSequence([tune_seed, number]).generate_state(1)[0])


def suggest(trial, space: SearchSpace) -> dict:
    """Draw a trial's configuration; each optimizer's lr is its own parameter (its own range)."""
    optimizer = trial.suggest_categorical("optimizer", sorted(space.optimizer))
    lr_range = space.optimizer[optimizer].lr
    drawn = {"optimizer": optimizer, "lr": trial.suggest_float(f"lr_{optimizer}", lr_range.low, lr_range.high,
                                                                log=True),
             "weight_decay": trial.suggest_float("weight_decay", space.weight_decay.low, space.weight_decay.high,
                                                 log=True)}
    for name in ("batch_size", "schedule", "augment", "label_smoothing"):
        drawn[name] = trial.suggest_categorical(name, list(getattr(space, name)))
    return drawn


def recipe_from(params: dict, max_epochs: int) -> dict:
    """A recipe (params.RecipeParams fields) from a trial's Optuna params, over `max_epochs`; the step schedule
    divides the lr by 10 after each third of the epochs."""
    optimizer = params["optimizer"]
    recipe = {"optimizer": optimizer, "lr": params[f"lr_{optimizer}"], "epochs": max_epochs,
              **{name: params[name] for name in ("weight_decay", "batch_size", "schedule", "augment",
                                                 "label_smoothing")}}
    if recipe["schedule"] == "step":
        recipe.update(step_size=math.ceil(max_epochs / 3), gamma=0.1)
    return recipe


@dataclass(frozen=True)
class TrialTask:
    """One trial's training up to `until_epoch` (None: all the recipe's epochs), for a worker."""

    model: str
    number: int  # -1: the headroom run
    recipe: dict
    until_epoch: int | None
    params_file: str
    data_dir: str
    state_file: str
    threads: int | None
    stop_event: str


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial's task gives back: the validation accuracy of every epoch so far, the best, the cost so far
    (CPU-seconds of training, over all its tasks), the CPU kind, the precision it trained in; or why it failed."""

    curve: list = field(default_factory=list)
    best_val_accuracy: float = 0.0
    best_epoch: int = 0
    train_cpu_seconds: float = 0.0
    cpu: str = ""
    precision: str = ""
    error: str = ""


def run_trial(task: TrialTask) -> TrialOutcome:
    """On a worker: train the model with the task's recipe, from the trial's saved state if it has one, up to
    until_epoch; only the training and validation splits are loaded."""
    import torch

    from . import data, models, process, training
    from .params import load_params, train_config
    from .tools import cpu_label

    if task.threads:
        torch.set_num_threads(task.threads)
    process.keep_freed_memory()
    config = None
    try:
        config = train_config(with_recipe(load_params(task.params_file), task.model, task.recipe), task.model)
        train_set, val_set = data.load_split(task.data_dir, "train"), data.load_split(task.data_dir, "val")
        resume = training.ResumeFile(task.state_file, training.fingerprint(config, train_set, val_set))
        saved = resume.load()
        training.seed_everything(config.seed)
        model = models.build_model(config.architecture, config.options)
        result = training.train(model, train_set, val_set, config, training.select_device(config.device),
                                quiet=True, resume=resume, state=saved, until_epoch=task.until_epoch)
    except Exception as error:  # noqa: BLE001 - diverged, out of memory, a bad recipe: the trial fails, the search goes on
        return TrialOutcome(error=first_line(error, 240), cpu=cpu_label(), precision=config.precision if config else "")
    return TrialOutcome([record.val_accuracy for record in result.epochs], result.best_val_accuracy,
                        result.best_epoch, result.train_cpu_seconds, cpu_label(), config.precision)


def with_recipe(params, model: str, recipe: dict):
    """`params` with `model`'s recipe overridden by `recipe` (its other knobs, precision for one, kept)."""
    from .params import RecipeParams

    spec = params.models[model]
    merged = RecipeParams.model_validate({**spec.recipe.model_dump(), **recipe})
    return params.model_copy(update={"models": {**params.models, model: spec.model_copy(update={"recipe": merged})}})
