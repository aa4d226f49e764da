"""`make tune`'s driver: the Optuna studies (one per searched model, in one storage), the rung decisions in trial
order, the trials' tasks on the engine, MLflow. What the search is: tuning.py; what it commits: search_record.py."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import search_record, sessions, tuning
from .errors import PipelineError, first_line
from .search_record import Headroom
from .tuning import STATE_DIR, TUNING_DIR, TrialOutcome, TrialTask, TuneParams

SESSIONS_FILE = TUNING_DIR / "sessions.json"  # every `make tune` that trained: its wall time


def _state(name):
    from optuna.trial import TrialState

    return TrialState[name]


def widens(old: dict, new: dict) -> bool:
    """Whether space `new` holds every configuration of space `old` (params.yaml's `tune.space`, as dicts): each
    range reaching at least as far both ways, each grid and the optimizers a superset."""
    def holds(a, b):
        if isinstance(a, dict) and set(a) == {"low", "high"}:
            return b["low"] <= a["low"] and a["high"] <= b["high"]
        if isinstance(a, dict):
            return set(a) <= set(b) and all(holds(a[key], b[key]) for key in a)
        return set(a) <= set(b)

    return set(old) == set(new) and holds(old, new)


def open_studies(storage: str, settings: TuneParams, models) -> dict:
    """Each model's study in `storage` (made, or loaded to go on), with its trials asked up to the number of
    configurations. Trial i is the same recipe for every model: a copy of trial i of another model's search in
    the storage where one has it, else drawn from the space by the sampler seeded for i. A search of other settings
    is refused, but for a widened space (`widens`: a chosen recipe at an edge): the trials asked so far stay
    as they were drawn, the next are drawn from the wider space, and the study records where each space began
    (its user attribute `spaces`)."""
    import optuna
    from optuna.pruners import SuccessiveHalvingPruner
    from optuna.samplers import RandomSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fixed = {key: value for key, value in settings.model_dump().items()
             if key in ("seed", "min_epochs", "max_epochs", "reduction_factor", "space")}
    backend = optuna.storages.get_storage(storage)
    searches = {name: optuna.load_study(study_name=name, storage=backend)  # every model's search in the storage
                for name in optuna.get_all_study_names(backend) if name.endswith("-search")}
    studies = {}
    for model in models:
        pruner = SuccessiveHalvingPruner(min_resource=settings.min_epochs, reduction_factor=settings.reduction_factor,
                                         min_early_stopping_rate=0)
        study = optuna.create_study(study_name=f"{model}-search", storage=backend, direction="maximize",
                                    load_if_exists=True, pruner=pruner)
        others = [other for name, other in searches.items() if name != study.study_name]
        searches[study.study_name] = study
        asked = len(study.get_trials(deepcopy=False))
        saved = json.loads(study.user_attrs.get("settings", "null"))
        if saved != fixed:
            if saved is not None and ({**saved, "space": None} != {**fixed, "space": None}
                                      or not widens(saved["space"], fixed["space"])):
                raise PipelineError(f"{storage}: holds a search of other settings for {model} (tune's seed, epochs "
                                    "or a space narrowed); move it aside (or set tune.storage) to start a new search")
            study.set_user_attr("settings", json.dumps(fixed, sort_keys=True))
            if saved is None and others:  # a model searched later: its trials so far will be the others' copies
                source = max(others, key=lambda other: len(other.get_trials(deepcopy=False)))
                spaces, start = source.user_attrs.get("spaces") or [], len(source.get_trials(deepcopy=False))
            else:
                spaces = study.user_attrs.get("spaces") or (
                    [{"from_trial": 0, "space": saved["space"]}] if saved else [])
                start = asked
            if not spaces or spaces[-1]["space"] != fixed["space"]:
                spaces = [*spaces, {"from_trial": start, "space": fixed["space"]}]
            study.set_user_attr("spaces", spaces)
        while asked < settings.configurations:
            copies = [trials[asked] for trials in (other.get_trials(deepcopy=False) for other in others)
                      if len(trials) > asked]
            if copies:
                study.enqueue_trial(copies[0].params)
            study.sampler = RandomSampler(seed=tuning.configuration_seed(settings.seed, asked))
            trial = study.ask()
            tuning.suggest(trial, settings.space)
            trial.set_user_attr("target_epochs", settings.rungs[0])
            asked += 1
        studies[model] = study
    return studies


def recorded_searches(storage: str, studies: dict, params) -> dict:
    """Every model's search in `storage`: the `studies` this run drives, and the others loaded (searched by
    another `make tune MODELS=...`), so the committed files keep them all; the compared models first."""
    import optuna

    names = set(optuna.get_all_study_names(storage))
    order = dict.fromkeys([*params.compare.models, *params.models])
    return {model: studies[model] if model in studies else optuna.load_study(study_name=f"{model}-search",
                                                                              storage=storage)
            for model in order if model in studies or f"{model}-search" in names}


@dataclass
class TrialView:
    """The driver's view of one RUNNING trial."""

    trial: object  # optuna.Trial
    target: int  # the epochs its current task trains to
    reported: int  # the epochs whose validation accuracy the study has


class Search:
    """The rung decisions and the tasks they make (see tuning.py's docstring)."""

    def __init__(self, studies, settings: TuneParams, task_fields: dict, tracker, parent_run, code, titles,
                 record_settings, recorded=None):
        """`studies`: the searches this run drives; `recorded`: every model's search the committed files hold
        (those and the ones searched before, by another `make tune MODELS=...`), in the models' order."""
        import optuna

        self.studies, self.settings, self.task_fields = studies, settings, task_fields
        self.recorded = recorded or studies
        self.tracker, self.parent_run, self.code, self.titles = tracker, parent_run, code, titles
        self.record_settings, self.headroom = record_settings, search_record.load_headroom()
        self.running, self.redraw = {}, True  # redraw: the figure, once a trial completed since
        self.session = sessions.SessionClock(SESSIONS_FILE, "make tune")  # this run's wall time, once it has tasks
        for model, study in studies.items():
            for frozen in study.get_trials(deepcopy=False, states=(_state("RUNNING"),)):
                reported = max(frozen.intermediate_values, default=0)
                self.running[model, frozen.number] = TrialView(optuna.trial.Trial(study, frozen._trial_id),
                                                               frozen.user_attrs["target_epochs"], reported)

    def frozen(self, model, number):
        """Trial `number` of `model` as the storage has it now (not a deep copy of every trial, as study.trials)."""
        return self.studies[model].get_trials(deepcopy=False)[number]

    def recipe(self, model, number) -> dict:
        return tuning.recipe_from(self.frozen(model, number).params, self.settings.max_epochs)

    def task(self, model, number, until_epoch) -> TrialTask:
        state_file = str((STATE_DIR / f"{model}-{number}.pt").resolve())
        return TrialTask(model, number, self.recipe(model, number), until_epoch, state_file=state_file,
                         **self.task_fields)

    def start(self) -> list:
        """The tasks to run first: each running trial's way to its target (where it stopped), the decisions
        already due, and the headroom runs of finished searches."""
        tasks = [self.task(model, number, view.target) for (model, number), view in sorted(self.running.items(),
                                                                                             key=lambda i: i[0][1])
                 if view.reported < view.target]
        for (model, number), view in list(self.running.items()):
            if view.reported == self.settings.max_epochs:  # trained to the end, the driver stopped before telling
                self.finish(model, number, self.trial_outcome(model, number))
        for model in self.studies:
            tasks += self.decide(model) + self.headroom_task(model)
        self.write()
        return tasks

    def trial_outcome(self, model, number) -> TrialOutcome:
        values = self.frozen(model, number).intermediate_values
        curve = [values[epoch] for epoch in sorted(values)]
        return TrialOutcome(curve, max(curve), curve.index(max(curve)) + 1)

    def done(self, task: TrialTask, outcome) -> list:
        """A task ended: report its epochs, tell what ended, decide what is due; returns the tasks this makes."""
        if isinstance(outcome, BaseException):  # its worker kept dying
            outcome = TrialOutcome(error=f"{type(outcome).__name__}: {first_line(outcome, 200)}")
        if task.number < 0:
            self.record_headroom(task, outcome)
            return []
        view = self.running[task.model, task.number]
        trial = view.trial
        cpus = [kind for kind in self.frozen(task.model, task.number).user_attrs.get("cpu", "").split("; ") if kind]
        trial.set_user_attr("cpu", "; ".join(dict.fromkeys([*cpus, outcome.cpu])))
        if outcome.precision:
            trial.set_user_attr("precision", outcome.precision)
        if outcome.error:
            trial.set_user_attr("fail_reason", outcome.error)
            self.finish(task.model, task.number, outcome, "FAIL")
        else:
            for epoch, value in enumerate(outcome.curve, start=1):
                if epoch > view.reported:
                    trial.report(value, epoch)
            view.reported = len(outcome.curve)
            trial.set_user_attr("train_cpu_seconds", outcome.train_cpu_seconds)
            trial.set_user_attr("best_epoch", outcome.best_epoch)
            if view.reported >= self.settings.max_epochs:
                self.finish(task.model, task.number, outcome)
        tasks = self.decide(task.model) + self.headroom_task(task.model)  # a failed last trial ends a search too
        self.write()
        return tasks

    def decide(self, model) -> list:
        """Each rung's due decisions, in trial order: trial i's waits until every earlier trial has been decided
        there or ended below it."""
        tasks, trials = [], len(self.studies[model].get_trials(deepcopy=False))
        for index, rung in enumerate(self.settings.rungs[:-1]):
            for number in range(trials):
                view = self.running.get((model, number))
                if view is None or view.target > rung:  # ended, or decided at this rung already
                    continue
                if view.reported < rung:  # still on its way here: later trials wait
                    break
                if view.trial.should_prune():
                    self.finish(model, number, self.trial_outcome(model, number), "PRUNED")
                else:
                    view.target = self.settings.rungs[index + 1]
                    view.trial.set_user_attr("target_epochs", view.target)
                    tasks.append(self.task(model, number, view.target))
        return tasks

    def finish(self, model, number, outcome: TrialOutcome, state="COMPLETE"):
        view = self.running.pop((model, number))
        study, title = self.studies[model], self.titles[model]
        view.trial.set_user_attr("code", self.code)
        if state == "COMPLETE":
            study.tell(view.trial, outcome.best_val_accuracy)
            self.redraw = True
        else:
            study.tell(view.trial, state=_state(state))
        (STATE_DIR / f"{model}-{number}.pt").unlink(missing_ok=True)
        print(f"{title} trial {number}: {state.lower()} after {len(outcome.curve)} epochs"
              + (f", validation accuracy {outcome.best_val_accuracy:.4f}" if outcome.curve else "")
              + (f": {outcome.error}" if outcome.error else ""), flush=True)
        self.log(model, number, outcome, state)

    def log(self, model, number, outcome: TrialOutcome, state):
        if self.tracker is None:
            return
        from .tracking import run_tags

        run_id = self.tracker.start_run(f"{self.titles[model]} trial {number}", self.recipe(model, number), {
            **run_tags("tune"), "mlflow.parentRunId": self.parent_run, "model": model, "trial": str(number),
            "state": state})
        self.tracker.log_metric_series(run_id, [("val/accuracy", value, epoch)
                                                for epoch, value in enumerate(outcome.curve, start=1)])
        if outcome.curve:
            self.tracker.log_metrics(run_id, {"best_val_accuracy": outcome.best_val_accuracy})
        if outcome.error:
            self.tracker.set_tags(run_id, {"fail_reason": outcome.error})
        self.tracker.end_run(run_id, "FAILED" if outcome.error else "FINISHED")

    # ----------------------------------------------------------------------- the convergence check

    def chosen(self, model):
        """The chosen trial of a model whose every trial is told, else None."""
        if any(key[0] == model for key in self.running):
            return None
        complete = [t for t in self.studies[model].get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        return max(complete, key=lambda t: (t.value, -t.number)) if complete else None

    def headroom_task(self, model) -> list:
        best = self.chosen(model)
        if best is None or model in self.headroom and self.headroom[model].chosen_trial == best.number:
            return []
        recipe = {**self.recipe(model, best.number), "epochs": 2 * self.settings.max_epochs}
        if recipe["schedule"] == "step":
            recipe["step_size"] *= 2
        state_file = str((STATE_DIR / f"{model}-headroom-{best.number}.pt").resolve())
        return [TrialTask(model, -1, recipe, None, state_file=state_file, **self.task_fields)]

    def record_headroom(self, task: TrialTask, outcome: TrialOutcome):
        best = self.chosen(task.model)
        if outcome.error or best is None:
            print(f"{self.titles[task.model]}: the headroom run failed: {outcome.error}", flush=True)
            return
        gain = outcome.best_val_accuracy - best.value
        self.headroom[task.model] = Headroom(best.number, self.settings.max_epochs, best.value, len(outcome.curve),
                                             outcome.best_val_accuracy, gain, self.settings.headroom_gain,
                                             gain <= self.settings.headroom_gain, outcome.train_cpu_seconds,
                                             outcome.cpu)
        Path(task.state_file).unlink(missing_ok=True)
        print(f"{self.titles[task.model]}: trial {best.number}'s recipe for {len(outcome.curve)} epochs: validation "
              f"{outcome.best_val_accuracy:.4f} against {best.value:.4f} ({gain * 100:+.2f} points): "
              + ("converged" if gain <= self.settings.headroom_gain else "raise tune.max_epochs"), flush=True)
        self.write()

    def write(self, figure=False) -> search_record.SearchRecord:
        self.session.write()
        record = search_record.write_results(self.recorded, self.settings, self.record_settings, self.headroom,
                                             self.titles, figure=figure or self.redraw)
        self.redraw = False
        return record


def tune(params, params_file: str, data_dir: str, jobs: int, address: str | None, tracker):
    """The search (tuning.py's docstring); returns tuning.json's record."""
    from . import engine, tracking
    from .tools import code_fingerprint, cpu_label

    settings = tuning.tune_params(params, params_file)
    models = tuning.searched_models(params, settings)
    titles = params.titles
    storage = settings.storage or f"sqlite:///{tuning.STORAGE_FILE.resolve()}"
    tuning.STORAGE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    studies = open_studies(storage, settings, models)
    recorded = recorded_searches(storage, studies, params)
    record_settings = {**settings.model_dump(exclude={"storage"}), "models": list(recorded), "rungs": settings.rungs,
                       "spaces": studies[models[0]].user_attrs.get("spaces"),
                       "train_seed": params.seed, "storage": settings.storage or str(tuning.STORAGE_FILE)}
    threads = engine.local_task_settings(jobs)["threads"] if address is None else None
    task_fields = {"params_file": str(Path(params_file).resolve()), "data_dir": str(Path(data_dir).resolve()),
                   "threads": threads, "stop_event": f"fashion-tune-stop-{os.getpid()}"}
    code = code_fingerprint(root=Path(__file__).resolve().parents[2])  # the checkout of this package
    run_params = {"configurations": settings.configurations, "rungs": json.dumps(settings.rungs),
                  "models": ",".join(models), "sampler_seed": settings.seed,
                  "space": json.dumps(settings.space.model_dump())}
    with tracking.stage_run(tracker, "tune", f"Search ({settings.configurations} configurations, rungs "
                                             f"{'/'.join(map(str, settings.rungs))})", run_params) as run_id:
        search = Search(studies, settings, task_fields, tracker, run_id, code, titles, record_settings, recorded)
        tasks = search.start()
        left = ", ".join(f"{titles[model]} {sum(key[0] == model for key in search.running)} of "
                         f"{settings.configurations}" for model in models)
        print(f"search: trials still running: {left}; "
              f"{f'{jobs} tasks at a time' if address is None else 'on ' + address}", flush=True)
        if tasks:
            search.session.begin(jobs if address is None else None, cpu_label())
            with engine.open_cluster(address, jobs) as client:
                engine.run_tasks(client, tuning.run_trial, tasks, search.done,
                                 key=lambda t: f"tune-{t.model}-{t.number}-{t.until_epoch}",
                                 priority=lambda t: t.until_epoch or 0)
        record = search.write(figure=True)
    return record.to_dict()
