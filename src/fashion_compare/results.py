"""The answers the pipeline writes, each a frozen dataclass: the one definition of its fields. Its JSON file is
written from it and read back into it (pydantic validates what is read: a missing, unknown or mistyped field
is one line naming the file and the field).

- `Comparison`: one run's comparison of each contender with the baseline, metrics/compare.json
  (comparison.compare makes it);
- `StudyResult`: a seed study's aggregate, metrics/study.json and metrics/study_<recipe>.json (study.aggregate);
- `SeedRunFile`: a seed folder's run.json (seed_folders.seed_files writes it); `RunRecord`: what a study keeps
  of it (the CPU kind, the timings, the MLflow runs).

The verdict of each (`ComparisonVerdict`, `StudyVerdict`) is uncertainty.Verdict with its context: the rule's
fields first, as docs/method.md defines them. Dicts keyed by data (a model name, a class name) stay dicts; what
is keyed by a field name is a dataclass: no field is named after a model, every model is a key (its name in
params.yaml's `models`), and a difference is always contender - baseline.
"""

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

from .errors import PipelineError
from .files import read_json, write_json
from .uncertainty import McNemar, Verdict

Interval = tuple[float, float]
Result = TypeVar("Result")


def result(cls):
    """A frozen dataclass whose JSON refuses a field it does not declare (nothing read is silently dropped)."""
    cls.__pydantic_config__ = ConfigDict(extra="forbid")
    return dataclass(frozen=True)(cls)


# ------------------------------------------------------------------ one run: metrics/compare.json

@result
class ModelResult:
    """One model's quality with its paired-bootstrap intervals, and its cost on the machine that ran it."""
    test_accuracy: float
    test_accuracy_ci: Interval
    macro_f1: float
    macro_f1_ci: Interval
    weighted_f1: float
    parameter_count: int
    epochs: int
    train_seconds: float
    latency_ms_per_image: float
    throughput_images_per_s: float


@result
class MetricComparison:
    """One class's metric for the contender and the baseline ({model: value}) and their difference (contender -
    baseline), each with its interval."""
    values: dict[str, float]
    intervals: dict[str, Interval]
    difference: float
    difference_ci: Interval


@result
class ClassComparison:
    """One class: precision, recall and F1 compared; the F1 winner (a model, or no significant difference)."""
    precision: MetricComparison
    recall: MetricComparison
    f1: MetricComparison
    winner: str
    f1_margin: float

    def metric(self, name: str) -> MetricComparison:
        """`name`: one of PER_CLASS_METRICS."""
        return getattr(self, name)


@result
class ComparisonVerdict(Verdict):
    """The rule's verdict on one run's test images (Verdict's fields) for one contender, with the gains and costs
    beside it (each a ratio contender / baseline)."""
    accuracy_gain: float
    accuracy_gain_ci: Interval
    accuracy_gain_se: float
    interval_covers: str
    macro_f1_gain: float
    macro_f1_gain_ci: Interval
    mcnemar: McNemar
    train_time_ratio: float
    parameter_ratio: float
    latency_ratio: float
    classes_won: dict[str, int]  # a model name or NO_WINNER -> classes
    common_epoch: int  # equal training epochs: a comparison that does not depend on the budget
    val_accuracy_at_common_epoch: dict[str, float]
    confidence: float
    bootstrap_samples: int


@result
class ContenderComparison:
    """One contender against the baseline: per class (in CLASS_NAMES order) and its verdict."""
    per_class: dict[str, ClassComparison]
    verdict: ComparisonVerdict


@result
class Comparison:
    baseline: str
    models: dict[str, ModelResult]  # every compared model, the contenders then the baseline
    contenders: dict[str, ContenderComparison]
    mlflow_run_id: str | None = None  # the compare stage's MLflow run (None: tracking off)


# ------------------------------------------------------------------ a seed study: metrics/study.json

@result
class Spread:
    """Per-seed values: mean, sample standard deviation, extremes."""
    mean: float
    sd: float
    min: float
    max: float


@result
class AccuracyEstimate:
    """A model's test accuracy over the seeds: its spread, and the mean's interval from both sources of noise."""
    mean: float
    sd: float
    min: float
    max: float
    ci: Interval
    se: float
    df: float
    se_seeds: float
    se_images: float
    se_interaction: float


@result
class StudyModel:
    test_accuracy: AccuracyEstimate
    test_accuracy_seeds_only_ci: Interval
    macro_f1: Spread


@result
class VarianceComponents:
    """Each source's variance of the mean gain, estimated (uncertainty.Estimate.components)."""
    seeds: float
    images: float
    interaction: float


@result
class GainEstimate:
    """The paired accuracy gain (contender - baseline) over seeds and test images (uncertainty.Estimate, stored)."""
    mean: float
    ci: Interval
    se: float
    df: float
    se_seeds: float
    se_images: float
    se_interaction: float
    seeds_only_ci: Interval
    variance_components: VarianceComponents
    sd_over_seeds: float
    min: float
    max: float
    p_value: float


@result
class Superiority:
    """P(contender > baseline): the share of seeds it won, with its exact interval."""
    value: float
    exact_ci: Interval
    seeds_won: int
    seeds_tied: int


@result
class ClassDifference:
    """One class's F1 difference over seeds, with its intervals and Holm-adjusted p-value."""
    f1_difference_mean: float
    f1_difference_ci: Interval
    f1_difference_adjusted_ci: Interval  # Bonferroni over the classes (the figure's)
    se: float
    p_value: float
    holm_p_value: float
    winner: str
    f1_mean: dict[str, float]  # the contender's and the baseline's


@result
class CpuKind:
    """What a seed's results depend on of the CPU (tools.cpu_kind)."""
    vendor: str
    family: str
    model: str
    isa: str
    name: str

    def label(self) -> str:
        """In a few words: 'AuthenticAMD family 25 model 17, AVX-512 BF16' (the name alone when no more is known)."""
        if self.vendor == "unknown":
            return self.name
        return f"{self.vendor} family {self.family} model {self.model}, {self.isa}"


@result
class RunRecord:
    """What a study keeps of a seed's run.json: the CPU kind it ran on, each model's training time, its MLflow
    runs (a model name or "compare" -> run id)."""
    cpu_kind: CpuKind
    train_seconds: dict[str, float]
    mlflow_run_ids: dict[str, str | None]


@result
class SeedRunFile:
    """A seed folder's run.json: where the seed ran (its experiment, git revision, the Dask worker; seeds collected
    by an older version name the experiment's baseline commit instead), the code fingerprint, the CPU (its name and
    kind), each model's threads and training seconds, the checksum of the folder's predictions.csv (checked at every
    aggregate), its MLflow runs (a model name or "compare" -> run id)."""
    seed: int
    experiment: str
    rev: str
    worker: str | None
    baseline: str | None
    code: str
    cpu: str
    cpu_kind: CpuKind
    threads: dict[str, int]
    train_seconds: dict[str, float]
    predictions_sha256: str
    mlflow_run_ids: dict[str, str | None]

    @property
    def record(self) -> RunRecord:
        return RunRecord(self.cpu_kind, self.train_seconds, self.mlflow_run_ids)


@result
class SeedGain:
    """One contender's gain in one seed's run judged alone: over its test images, the one-sided bounds the rule
    uses, McNemar's p, the rule's single-run verdict."""
    accuracy_gain: float
    accuracy_gain_ci: Interval
    accuracy_gain_one_sided: Interval
    mcnemar_p: float
    single_run_decision: str


@result
class SeedResult:
    """One seed's run: each model's test accuracy, each contender's gain judged alone, and its run record."""
    seed: int
    test_accuracy: dict[str, float]
    contenders: dict[str, SeedGain]
    run: RunRecord


@result
class CpuKindGain:
    seeds: tuple[int, ...]
    accuracy_gain_mean: float


@result
class CostRatio:
    """A contender's training time over the baseline's, over the seeds."""
    median: float
    min: float
    max: float


@result
class Plan:
    """How many seeds would likely decide an undecided study (study.plan)."""
    power: float
    cap: int
    test_set_floor_se: float
    planned_k: int | None
    more_seeds_can_decide: bool


@result
class StudyVerdict(Verdict):
    """The rule's verdict over the seeds (Verdict's fields), its interval level, the plan when undecided, and
    how many single runs would have said otherwise."""
    confidence: float
    plan: Plan | None
    single_runs_saying_otherwise: int


@result
class ContenderStudy:
    """One contender against the baseline over the seeds."""
    accuracy_gain: GainEstimate
    p_better: Superiority
    aso_epsilon_min: float | None
    per_class: dict[str, ClassDifference]  # in CLASS_NAMES order
    per_cpu_kind: dict[str, CpuKindGain] | None  # CpuKind.label -> its seeds (None: one kind)
    train_time_ratio: CostRatio | None  # None: no seed recorded its times
    verdict: StudyVerdict


@result
class StudyResult:
    seeds: tuple[int, ...]
    k: int
    n_images: int
    failed_seeds: dict[str, str]  # seed -> why
    baseline: str
    models: dict[str, StudyModel]  # every compared model, the contenders then the baseline
    contenders: dict[str, ContenderStudy]
    per_seed: tuple[SeedResult, ...]
    mlflow_run_id: str | None = None  # the MLflow run that first logged these figures (None: tracking off)


# ------------------------------------------------------------------ JSON

def to_json(value) -> str:
    """The text files.write_json gives the file (strict JSON, indented as every metrics file), to compare with
    what a file holds; tests/test_results.py checks the two agree on every committed result."""
    return json.dumps(asdict(value), indent=2, allow_nan=False) + "\n"


def write(path, value):
    write_json(path, asdict(value))


def parse(kind: type[Result], data, where, made_by="the step that writes it") -> Result:
    """`data` (JSON's values) as a `kind`, validated: a missing, unknown or mistyped field is one line naming
    `where`, the field and what to run again (`made_by`)."""
    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(map(str, first["loc"])) or "(top level)"
        raise PipelineError(f"{where}: not a {kind.__name__} ({field}: {first['msg'].lower()}); rerun "
                            f"{made_by}") from None


def load(kind: type[Result], path, made_by="the stage that writes it (dvc repro)") -> Result:
    return parse(kind, read_json(path, made_by), Path(path), made_by)


def with_run_id(value: Result, run_id: str | None) -> Result:
    return replace(value, mlflow_run_id=run_id)


def with_saved_run_id(path, value: Result) -> tuple[Result, bool]:
    """`value` with the MLflow run id the result file at `path` holds (None where it holds none), and whether
    the file holds exactly that already: a recomputation that changes no figure need rewrite nothing. A file
    missing or not JSON: a PipelineError naming it."""
    saved = read_json(path)
    kept = with_run_id(value, saved.get("mlflow_run_id") if isinstance(saved, dict) else None)
    return kept, to_json(kept) == Path(path).read_text(encoding="utf-8")
