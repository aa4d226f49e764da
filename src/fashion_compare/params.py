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
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic import Strict as StrictValue

from .errors import ParamsError

PARAMS_FILE = "params.yaml"
MAX_EPOCHS = 200
Optimizer = Literal["adam", "adamw", "sgd"]  # sgd: momentum 0.9, Nesterov (recipes.make_optimizer)
Schedule = Literal["constant", "step", "cosine", "one_cycle"]
Precision = Literal["fp32", "bf16"]  # bf16: autocast to bfloat16 on the CPU or CUDA (recipes.autocast)
# Augmentation of the training batches only (recipes.augment_batch): validation and test images never are
Augment = Literal["none", "flip", "flip_translate", "flip_translate_rotate", "flip_translate_erase"]
ModelName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]  # file names, CSV columns, MLflow


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _not_a_boolean(value):
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


def enough_per_class(subset: int) -> int:
    """A stratified subset of the training images: 0 (all of them) or at least 10 of each class."""
    if 0 < subset < 100:
        raise ValueError("must be 0 (all) or at least 100 (10 images of each class)")
    return subset


Int = Annotated[int, StrictValue()]  # `epochs: true` or `epochs: 2.5` is an error, not 1 or 2
Bool = Annotated[bool, StrictValue()]  # `channels_last: 1` is an error, not true
Float = Annotated[float, BeforeValidator(_not_a_boolean)]  # `lr: true` is an error; 1 and "1e-3" are numbers
Subset = Annotated[Int, Field(ge=0, le=60000), AfterValidator(enough_per_class)]


class DataParams(Strict):
    raw_dir: str = "data/raw"
    val_fraction: Float = Field(0.25, gt=0, lt=1)
    subset: Subset = Field(0, description="training images to draw (stratified); 0 = all")


class RecipeParams(Strict):
    """One model's training recipe (`models.<name>.recipe`; the reference experiment's by default, see
    params.yaml)."""

    batch_size: Int = Field(gt=0)
    lr: Float | None = Field(None, gt=0, description="overrides the top-level lr")
    epochs: Int | None = Field(None, gt=0, le=MAX_EPOCHS, description="overrides the top-level epochs")
    optimizer: Optimizer = Field("adam", description="adam, adamw (decoupled weight decay) or sgd (Nesterov)")
    weight_decay: Float = Field(0.0, ge=0, lt=1, description="adamw's decoupled or sgd's L2 weight decay")
    schedule: Schedule = Field("constant", description="learning rate: constant, StepLR, cosine or one-cycle")
    step_size: Int | None = Field(None, gt=0, description="StepLR period in epochs (schedule: step only)")
    gamma: Float = Field(0.1, gt=0, le=1, description="StepLR factor (schedule: step only)")
    augment: Augment = Field("none", description="augmentation of the training batches")
    label_smoothing: Float = Field(0.0, ge=0, lt=1, description="of the training loss (validation's is plain)")
    precision: Precision = Field("fp32", description="bf16: autocast to bfloat16 (CPU or CUDA)")
    channels_last: Bool = Field(False, description="NHWC memory format (faster for the CNN on CPU)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.schedule == "step" and self.step_size is None:
            raise ValueError("schedule 'step' needs a step_size")
        if self.optimizer == "adam" and self.weight_decay > 0:
            raise ValueError("optimizer 'adam' takes no weight_decay here; use 'adamw' (decoupled) or 0")
        return self


class ModelSpec(Strict):
    """A model: its title, its architecture (a builder in models.py) with that architecture's options, and
    its recipe."""

    title: str = Field(min_length=1)
    architecture: str
    options: dict[str, str | Int | Float | Bool] = Field(default_factory=dict)
    recipe: RecipeParams

    @model_validator(mode="after")
    def _known_architecture(self):
        from .models import architecture_options

        try:
            architecture_options(self.architecture, self.options)
        except ValidationError as error:
            first = error.errors()[0]
            raise ValueError(f"options.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
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
    baseline: ModelName = Field(description="the model every contender is compared with (a name in models)")
    contenders: list[ModelName] = Field(min_length=1, description="the models compared with the baseline")
    min_accuracy_gain: Float = Field(0.01, ge=0, le=1, description="accuracy a contender must add")
    alpha: Float = Field(0.05, gt=0, lt=1, description="level of the verdict's one-sided bounds against the margin")
    bootstrap_samples: Int = Field(2000, ge=100, description="paired bootstrap resamples of the test set")
    confidence: Float = Field(0.95, gt=0, lt=1, description="level of the confidence intervals")

    @model_validator(mode="after")
    def _distinct(self):
        if len(set(self.contenders)) < len(self.contenders):
            raise ValueError("contenders: a model listed twice")
        if self.baseline in self.contenders:
            raise ValueError(f"contenders: '{self.baseline}' is the baseline")
        return self

    @property
    def models(self) -> tuple[str, ...]:
        """Every compared model, the contenders then the baseline: the models the pipeline trains."""
        return (*self.contenders, self.baseline)


class StudyParams(Strict):
    seeds: list[Int] = Field([42, 43, 44, 45, 46], description="a seed study's seeds (make study)")
    jobs: Int = Field(1, ge=1, description="seeds trained at once; the cores are shared among them")


class Params(Strict):
    seed: Int = Field(42, ge=0)
    lr: Float = Field(0.001, gt=0)
    epochs: Int = Field(10, gt=0, le=MAX_EPOCHS)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Literal["auto"] | int = Field(
        "auto", description="CPU threads per stage; auto: OMP_NUM_THREADS when set, else the cores available")
    data: DataParams = DataParams()
    models: dict[ModelName, ModelSpec] = Field(min_length=2)
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    compare: CompareParams
    study: StudyParams = StudyParams()
    tune: dict | None = None  # make tune's search, validated by tuning.py (it shapes no pipeline output)

    @field_validator("threads", mode="before")
    @classmethod
    def _auto_or_count(cls, value):
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("must be 'auto' or a number of threads (at least 1)")

    @model_validator(mode="after")
    def _compared_models_declared(self):
        for name in self.compare.models:
            if name not in self.models:
                raise ValueError(f"compare: '{name}' is not a model declared in models ({', '.join(self.models)})")
        return self

    def title(self, model: str) -> str:
        return self.models[model].title

    @property
    def titles(self) -> dict[str, str]:
        """{model name: its title}, every declared model's (what the reports and figures print)."""
        return {name: spec.title for name, spec in self.models.items()}


class TrainConfig(Strict):
    """Everything that shapes one model's training run, with overrides resolved."""

    model: str  # its name in params.yaml
    architecture: str
    options: dict  # the architecture's, every default spelled out (models.architecture_options)
    lr: float
    epochs: int
    batch_size: int
    optimizer: str
    weight_decay: float
    schedule: str
    step_size: int | None  # schedule step only
    gamma: float
    augment: str
    label_smoothing: float
    precision: str
    channels_last: bool
    seed: int
    device: str
    eval_batch_size: int  # validation after every epoch (evaluate.batch_size); changes no weight


def format_error(path, error: ValidationError, prefix="") -> str:
    """A validation error in one line: the file, the key (under `prefix`), what is wrong, how many more."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in ([prefix] if prefix else []) + list(first["loc"])) or "(top level)"
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
        raise ParamsError(format_error(path, error)) from None


def train_config(params: Params, model: str) -> TrainConfig:
    from .models import architecture_options

    if model not in params.models:
        raise ParamsError(f"{PARAMS_FILE}: models: no model named '{model}' ({', '.join(params.models)})")
    spec = params.models[model]
    recipe = spec.recipe
    return TrainConfig(
        model=model,
        architecture=spec.architecture,
        options=architecture_options(spec.architecture, spec.options),
        lr=recipe.lr if recipe.lr is not None else params.lr,
        epochs=recipe.epochs if recipe.epochs is not None else params.epochs,
        batch_size=recipe.batch_size,
        optimizer=recipe.optimizer,
        weight_decay=recipe.weight_decay,
        schedule=recipe.schedule,
        step_size=recipe.step_size if recipe.schedule == "step" else None,
        gamma=recipe.gamma,
        augment=recipe.augment,
        label_smoothing=recipe.label_smoothing,
        precision=recipe.precision,
        channels_last=recipe.channels_last,
        seed=params.seed,
        device=params.device,
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
