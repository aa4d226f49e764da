"""What `make tune` commits (tuning.py's docstring lists the files): each model's search as typed records
(tuning.json: its trials' states, epochs and CPU-hours, its choice and the edges of that choice, the search's best
after n configurations with a bootstrap band), the convergence checks (headroom.json), the trials' table, the
chosen recipes of the finished searches (recipe.yaml) and the figure."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .tuning import TUNING_DIR, SearchSpace, TuneParams, recipe_from

PLOTS_DIR = Path("plots/tuning")
RECIPE_FILE = TUNING_DIR / "recipe.yaml"  # each finished search's chosen recipe: make study RECIPE=tuned
TRIAL_FIELDS = ["number", "state", "val_accuracy", "epochs", "best_epoch", "optimizer", "lr", "weight_decay",
                "batch_size", "schedule", "augment", "label_smoothing", "train_cpu_seconds", "code", "cpu",
                "precision", "fail_reason"]  # precision: the model's recipe's (params.yaml), not searched
BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 2000, 0


@dataclass(frozen=True)
class CurvePoint:
    """The search of the first `configurations` trials: its best value, the CPU-hours it cost, and a bootstrap
    band over those trials: the 5th and 95th percentiles of the best complete trial of a resample, among the
    resamples that drew one (None while none is complete); `none_drawn`: the share of resamples that drew none
    (under successive halving few trials are complete, so a resample often misses them all)."""

    configurations: int
    cpu_hours: float
    best: float | None
    low: float | None
    high: float | None
    none_drawn: float | None = None


@dataclass(frozen=True)
class ModelSearch:
    """One model's search in tuning.json."""

    configurations: int
    complete: int
    pruned: int
    failed: int
    running: int
    epochs: int
    cpu_hours: float
    cpu_kinds: list
    chosen_trial: int | None
    best_val_accuracy: float | None
    second_val_accuracy: float | None  # the best without the chosen trial: how much the top rests on it
    chosen_recipe: dict | None
    edges: dict  # a chosen lr or weight decay within the outer 15 % of its log range: {knob: position}
    curve: list[CurvePoint]

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelSearch":
        return cls(**{**raw, "curve": [CurvePoint(**point) for point in raw["curve"]]})


@dataclass(frozen=True)
class Headroom:
    """The convergence check of a model's chosen recipe: trained for `epochs` (twice the maximum) against the
    search's value at max_epochs."""

    chosen_trial: int
    max_epochs: int
    value_at_max: float
    epochs: int
    value: float
    gain: float
    limit: float
    converged: bool
    train_cpu_seconds: float
    cpu: str


@dataclass(frozen=True)
class SearchRecord:
    """metrics/tuning/tuning.json."""

    settings: dict
    models: dict  # {model: ModelSearch}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "SearchRecord":
        return cls(raw["settings"], {model: ModelSearch.from_dict(search) for model, search in raw["models"].items()})


def _cpu_hours(trial) -> float:
    return trial.user_attrs.get("train_cpu_seconds", 0.0) / 3600


def search_curve(trials: list) -> list[CurvePoint]:
    """The best complete value and the CPU-hours of the first n trials, n = 1..N, with a bootstrap band: the
    5th-95th percentiles of the best complete value among n trials drawn with replacement from those n, over
    the resamples that drew a complete trial, and the share that drew none."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    values = np.array([t.value if t.state.name == "COMPLETE" else np.nan for t in trials], dtype=float)
    hours = np.cumsum([_cpu_hours(t) for t in trials])
    points = []
    for n in range(1, len(trials) + 1):
        prefix = values[:n]
        best = float(np.nanmax(prefix)) if not np.isnan(prefix).all() else None
        draws = prefix[rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))]
        complete = ~np.isnan(draws).all(axis=1)
        tops = np.nanmax(np.where(np.isnan(draws), -np.inf, draws), axis=1)[complete]
        if not complete.any():  # no complete trial among the first n (a resample draws one when there is)
            points.append(CurvePoint(n, float(hours[n - 1]), best, None, None))
            continue
        points.append(CurvePoint(n, float(hours[n - 1]), best, float(np.percentile(tops, 5)),
                                 float(np.percentile(tops, 95)), round(1 - float(complete.mean()), 4)))
    return points


def model_search(trials: list, space: SearchSpace, max_epochs: int) -> ModelSearch:
    states = [t.state.name for t in trials]
    complete = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: (-t.value, t.number))
    best = complete[0] if complete else None
    recipe = recipe_from(best.params, max_epochs) if best else None
    edges = {}
    if recipe:
        for knob, scale in (("lr", space.optimizer[recipe["optimizer"]].lr), ("weight_decay", space.weight_decay)):
            position = scale.position(recipe[knob])
            if not 0.15 <= position <= 0.85:
                edges[knob] = round(position, 3)
    return ModelSearch(
        configurations=len(trials), complete=states.count("COMPLETE"), pruned=states.count("PRUNED"),
        failed=states.count("FAIL"), running=states.count("RUNNING"),
        epochs=sum(len(t.intermediate_values) for t in trials), cpu_hours=sum(map(_cpu_hours, trials)),
        cpu_kinds=sorted({kind for t in trials for kind in t.user_attrs.get("cpu", "").split("; ") if kind}),
        chosen_trial=best.number if best else None, best_val_accuracy=best.value if best else None,
        second_val_accuracy=complete[1].value if len(complete) > 1 else None, chosen_recipe=recipe, edges=edges,
        curve=search_curve(trials))


def trial_row(trial, max_epochs: int) -> dict:
    attrs = trial.user_attrs
    recipe = recipe_from(trial.params, max_epochs) if "optimizer" in trial.params else {}
    return {"number": trial.number, "state": trial.state.name,
            "val_accuracy": trial.value if trial.state.name == "COMPLETE" else "",
            "epochs": len(trial.intermediate_values), "best_epoch": attrs.get("best_epoch", ""),
            **{name: recipe.get(name, "") for name in TRIAL_FIELDS[5:12]},
            **{name: attrs.get(name, "") for name in TRIAL_FIELDS[12:]}}


def finished(search: ModelSearch, settings: TuneParams, check: Headroom | None) -> bool:
    """A model's search has finished: every configuration decided, and its chosen recipe passed the convergence
    check (twice the maximum epochs gained at most headroom_gain)."""
    return (search.chosen_trial is not None and search.configurations >= settings.configurations
            and not search.running and check is not None and check.chosen_trial == search.chosen_trial
            and check.converged)


def load_headroom() -> dict:
    path = TUNING_DIR / "headroom.json"
    if not path.is_file():
        return {}
    return {model: Headroom(**check) for model, check in json.loads(path.read_text(encoding="utf-8")).items()}


def write_results(studies: dict, settings: TuneParams, record_settings: dict, headroom: dict, titles: dict,
                  figure=True):
    """The committed files of the search so far (each write atomic); the figure where `figure`."""
    import yaml

    from . import plots
    from .files import save_figure, write_csv, write_json, write_text

    searches = {}
    for model, study in studies.items():
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        write_csv(TUNING_DIR / f"{model}_trials.csv", [trial_row(t, settings.max_epochs) for t in trials],
                  TRIAL_FIELDS)
        searches[model] = model_search(trials, settings.space, settings.max_epochs)
    record = SearchRecord(record_settings, searches)
    write_json(TUNING_DIR / "tuning.json", record.to_dict())
    if headroom:
        write_json(TUNING_DIR / "headroom.json", {model: asdict(check) for model, check in headroom.items()})
    chosen = {model: search.chosen_recipe for model, search in searches.items()
              if finished(search, settings, headroom.get(model))}
    if chosen:
        write_text(RECIPE_FILE, "# make tune's choice per model whose search has finished (every configuration "
                   "decided, the convergence check passed; metrics/tuning/tuning.json, headroom.json): the recipe "
                   "make study RECIPE=tuned trains\n" + yaml.safe_dump(chosen, sort_keys=True))
    else:
        RECIPE_FILE.unlink(missing_ok=True)  # a search gone on (widened, more configurations): no choice yet
    if figure:
        drawn = plots.search_figure(searches, titles)
        save_figure(PLOTS_DIR / "search.png", drawn)
        plots.close(drawn)
    return record
