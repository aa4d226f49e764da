"""params.yaml, validated: every key known, every value in range and of its type, one-line errors.

Types are strict because DVC decides whether a stage must rerun by comparing params with Python's `==`:
after a run with `epochs: 1`, `epochs: true` or `epochs: 1.0` compare equal and DVC would call the
pipeline "up to date". So an integer param refuses booleans and floats, a boolean param refuses 0 and 1,
and a float param refuses booleans. `python -m fashion_compare.params` checks params.yaml on its own
(`make repro` runs it before `dvc repro`).
"""

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic import Strict as StrictValue

from .errors import ParamsError

PARAMS_FILE = "params.yaml"
MAX_EPOCHS = 30
Schedule = Literal["constant", "step", "cosine"]
# Augmentation of the training batches only (training.augment_batch): validation and test images never are
Augment = Literal["none", "flip", "flip_translate", "flip_translate_rotate"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _not_a_boolean(value):
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


Int = Annotated[int, StrictValue()]  # `epochs: true` or `epochs: 2.5` is an error, not 1 or 2
Bool = Annotated[bool, StrictValue()]  # `channels_last: 1` is an error, not true
Float = Annotated[float, BeforeValidator(_not_a_boolean)]  # `lr: true` is an error; 1 and "1e-3" are numbers


class DataParams(Strict):
    raw_dir: str = "data/raw"
    val_fraction: Float = Field(0.25, gt=0, lt=1)
    subset: Int = Field(0, ge=0, le=60000, description="training images to draw (stratified); 0 = all")

    @field_validator("subset")
    @classmethod
    def _enough_per_class(cls, subset):
        if 0 < subset < 100:
            raise ValueError("must be 0 (all) or at least 100 (10 images of each class)")
        return subset


class ModelParams(Strict):
    """One model's training recipe (the reference experiment's by default, see params.yaml)."""

    batch_size: Int = Field(gt=0)
    lr: Float | None = Field(None, gt=0, description="overrides the top-level lr")
    epochs: Int | None = Field(None, gt=0, le=MAX_EPOCHS, description="overrides the top-level epochs")
    weight_decay: Float = Field(0.0, ge=0, lt=1, description="decoupled weight decay: AdamW when > 0, else Adam")
    schedule: Schedule = Field("constant", description="learning rate per epoch: constant, StepLR or cosine")
    step_size: Int | None = Field(None, gt=0, description="StepLR period in epochs (schedule: step only)")
    gamma: Float = Field(0.1, gt=0, le=1, description="StepLR factor (schedule: step only)")
    augment: Augment = Field("none", description="augmentation of the training batches")
    channels_last: Bool = Field(False, description="NHWC memory format (faster for the CNN on CPU)")

    @model_validator(mode="after")
    def _step_needs_a_period(self):
        if self.schedule == "step" and self.step_size is None:
            raise ValueError("schedule 'step' needs a step_size")
        return self


class EvaluateParams(Strict):
    batch_size: Int = Field(1000, gt=0)
    latency_repeats: Int = Field(200, gt=0)


class TrackingParams(Strict):
    enabled: Bool = True
    experiment: str = Field("fashion-mnist", min_length=1)
    register_model: Bool = False
    log_model: Bool = True


class CompareParams(Strict):
    min_accuracy_gain: Float = Field(0.01, ge=0, le=1, description="accuracy the deep model must add")
    alpha: Float = Field(0.05, gt=0, lt=1, description="level of the verdict's one-sided bounds against the margin")
    bootstrap_samples: Int = Field(2000, ge=100, description="paired bootstrap resamples of the test set")
    confidence: Float = Field(0.95, gt=0, lt=1, description="level of the confidence intervals")


class StudyParams(Strict):
    seeds: list[Int] = Field([42, 43, 44, 45, 46], description="a seed study's seeds (make study)")
    jobs: Int = Field(1, ge=1, description="seeds trained at once; the cores are shared among them")


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
    """The recipe knobs a tuning draws, the same space for both models (tuning.py)."""

    lr: FloatRange
    weight_decay: list[Annotated[Float, Field(ge=0, lt=1)]] = Field(min_length=1)
    batch_size: list[Annotated[Int, Field(gt=0)]] = Field(min_length=1)
    epochs: list[Annotated[Int, Field(gt=0, le=MAX_EPOCHS)]] = Field(min_length=1)
    schedule: list[Schedule] = Field(min_length=1)
    augment: list[Augment] = Field(min_length=1)


class TuneParams(Strict):
    """make tune: a seeded random search of each model's recipe, the same budget for both (tuning.py)."""

    trials: Int = Field(12, ge=1, description="trials per model")
    seed: Int = Field(0, ge=0, description="seeds the sampler; each trial trains with the top-level seed")
    subset: Int = Field(9000, ge=0, description="training images per trial, stratified from the training split;"
                                                " 0 = all of it")
    storage: str | None = Field(None, min_length=1, description="Optuna storage URL; null = the SQLite file")
    space: SearchSpace

    @field_validator("subset")
    @classmethod
    def _enough_per_class(cls, subset):
        if 0 < subset < 100:
            raise ValueError("must be 0 (all) or at least 100 (10 images of each class)")
        return subset


class Params(Strict):
    seed: Int = Field(42, ge=0)
    lr: Float = Field(0.001, gt=0)
    epochs: Int = Field(10, gt=0, le=MAX_EPOCHS)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Literal["auto"] | int = Field(
        "auto", description="CPU threads per stage; auto: OMP_NUM_THREADS when set, else the cores available")
    mixed_precision: Bool = False
    data: DataParams = DataParams()
    resnet: ModelParams
    cnn: ModelParams
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    compare: CompareParams = CompareParams()
    study: StudyParams = StudyParams()
    tune: TuneParams | None = None

    @field_validator("threads", mode="before")
    @classmethod
    def _auto_or_count(cls, value):
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("must be 'auto' or a number of threads (at least 1)")


class TrainConfig(Strict):
    """Everything that shapes one model's training run, with overrides resolved."""

    model: Literal["resnet", "cnn"]
    lr: float
    epochs: int
    batch_size: int
    weight_decay: float
    schedule: str
    step_size: int | None  # schedule step only
    gamma: float
    augment: str
    channels_last: bool
    seed: int
    device: str
    mixed_precision: bool
    eval_batch_size: int  # validation after every epoch (evaluate.batch_size); changes no weight


def _format_error(path, error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "missing key"
    extra = f" ({len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return f"{path}: {key}: {message}{extra}"


def load_params(path=PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where} not valid YAML") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of params at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_format_error(path, error)) from None


def train_config(params: Params, model: str) -> TrainConfig:
    section: ModelParams = getattr(params, model)
    return TrainConfig(
        model=model,
        lr=section.lr if section.lr is not None else params.lr,
        epochs=section.epochs if section.epochs is not None else params.epochs,
        batch_size=section.batch_size,
        weight_decay=section.weight_decay,
        schedule=section.schedule,
        step_size=section.step_size if section.schedule == "step" else None,
        gamma=section.gamma,
        augment=section.augment,
        channels_last=section.channels_last,
        seed=params.seed,
        device=params.device,
        mixed_precision=params.mixed_precision,
        eval_batch_size=params.evaluate.batch_size,
    )


def main(argv=None):
    """`python -m fashion_compare.params [params.yaml]`: check the file; one line and exit 1 if invalid."""
    import sys

    path = (argv if argv is not None else sys.argv[1:] or [PARAMS_FILE])[0]
    try:
        load_params(path)
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{path}: valid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
