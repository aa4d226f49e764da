"""The search (tuning.py, search.py): a small real one (4 configurations x 2 models, rungs 1 and 3, on a 600-image
draw, as Dask tasks on a local cluster of 2 workers; the test split is not even there), and the rung decisions
fed made-up outcomes: in trial order whatever order the tasks end in, a killed driver going on where it stopped,
a failing trial recorded."""

import csv
import json
import random
from pathlib import Path

import pytest
import yaml

from fashion_compare import data, search, search_record, sessions, tracking, tuning
from fashion_compare.params import load_params
from fashion_compare.tuning import TrialOutcome

SPACE = {"optimizer": {"adamw": {"lr": {"low": 0.0005, "high": 0.003}}, "sgd": {"lr": {"low": 0.01, "high": 0.1}}},
         "weight_decay": {"low": 1e-5, "high": 1e-2}, "batch_size": [64, 128],
         "schedule": ["cosine", "step", "one_cycle"], "augment": ["none", "flip_translate_erase"],
         "label_smoothing": [0.0, 0.1]}
REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SMALL = {"configurations": 4, "seed": 0, "min_epochs": 1, "max_epochs": 3, "reduction_factor": 3,
         "headroom_gain": 0.002, "models": None, "storage": None, "space": SPACE}


def write_params(folder, **tune):
    params = yaml.safe_load(REPO_PARAMS.read_text())
    params["tune"] = {**SMALL, **tune}
    params["tracking"]["log_model"] = False
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture
def workspace(tmp_path, monkeypatch, real_raw):
    """A folder with params.yaml (a 4-configuration search) and data/prepared holding the train and val splits."""
    splits = data.prepare(*real_raw, 0.25, 600, seed=42)
    data.save_splits({name: splits[name] for name in ("train", "val")}, tmp_path / "data/prepared")
    write_params(tmp_path, headroom_gain=0.5)  # on 600 images a recipe converges late: count any gain as converged
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


def rows(model):
    with open(f"metrics/tuning/{model}_trials.csv") as handle:
        return list(csv.DictReader(handle))


RECIPE_COLUMNS = search_record.TRIAL_FIELDS[5:12]


@pytest.mark.e2e
@pytest.mark.long
def test_a_small_search_same_configurations_full_rungs_validation_only_and_its_rerun(workspace):
    params = load_params("params.yaml")
    result = search.tune(params, "params.yaml", "data/prepared", 2, None, tracking.connect(params.tracking))
    trials = {model: rows(model) for model in ("resnet", "cnn")}
    for number in range(4):  # trial i: the same recipe for each model
        same = [[trials[model][number][c] for c in RECIPE_COLUMNS] for model in ("resnet", "cnn")]
        assert same[0] == same[1]
    for model, model_rows in trials.items():
        states = [row["state"] for row in model_rows]
        assert set(states) <= {"COMPLETE", "PRUNED"} and states[0] == "COMPLETE"  # the first goes on (ASHA)
        assert all(row["epochs"] == ("3" if row["state"] == "COMPLETE" else "1") for row in model_rows)
        assert all(float(row["train_cpu_seconds"]) > 0 for row in model_rows)
        assert {row["precision"] for row in model_rows} == {params.models[model].recipe.precision}  # recorded
        found = result["models"][model]
        assert found["configurations"] == 4 and found["running"] == 0 and found["cpu_hours"] > 0
        assert found["epochs"] == sum(int(row["epochs"]) for row in model_rows)
        assert found["best_val_accuracy"] == max(float(r["val_accuracy"]) for r in model_rows if r["val_accuracy"])
        assert found["curve"][-1]["best"] == found["best_val_accuracy"]
    chosen = yaml.safe_load(open("metrics/tuning/recipe.yaml"))
    assert set(chosen) == {"resnet", "cnn"} and chosen["cnn"]["epochs"] == 3
    headroom = json.loads(open("metrics/tuning/headroom.json").read())
    assert {model: check["epochs"] for model, check in headroom.items()} == {"resnet": 6, "cnn": 6}
    assert all(check["gain"] == pytest.approx(check["value"] - check["value_at_max"]) for check in headroom.values())
    assert open("plots/tuning/search.png", "rb").read(4) == b"\x89PNG"
    assert search_record.SearchRecord.from_dict(result).to_dict() == result  # tuning.json typed, round trip
    assert result["settings"]["spaces"] == [{"from_trial": 0, "space": SPACE}]  # where each space began
    assert not list(tuning.STATE_DIR.glob("*.pt"))  # every trial's state gone with its trial
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("fashion-mnist")
    children = client.search_runs([experiment.experiment_id], "tags.`dvc.stage` = 'tune'")
    assert len([run for run in children if run.data.tags.get("trial")]) == 8

    sessions = json.loads(search.SESSIONS_FILE.read_text())
    assert len(sessions) == 1 and sessions[0]["jobs"] == 2 and sessions[0]["wall_seconds"] > 0

    before = {model: open(f"metrics/tuning/{model}_trials.csv").read() for model in ("resnet", "cnn")}
    again = search.tune(params, "params.yaml", "data/prepared", 2, None, None)  # done: nothing trains
    assert again == result and before == {model: open(f"metrics/tuning/{model}_trials.csv").read()
                                          for model in ("resnet", "cnn")}
    assert json.loads(search.SESSIONS_FILE.read_text()) == sessions  # a run with nothing to train adds no session


# ---------------------------------------------------------------------------- the decisions, made-up outcomes

def made_up_value(model, number, epoch):
    """A validation accuracy per (model, trial, epoch): rises with epochs, trials in a fixed shuffled order."""
    rank = random.Random(f"{model}-{number}").random()
    return round(0.5 + 0.3 * rank + 0.02 * epoch, 6)


def drive(folder, models=("resnet", "cnn"), order_seed=0, stop_after=None, fail=(), headroom_lift=None):
    """The driver on made-up outcomes: tasks end in an order drawn by `order_seed`; `stop_after` tasks, then
    the driver is dropped (killed). A headroom run scores 0.9, or its chosen trial's value plus
    `headroom_lift[model]`. Returns the tasks left."""
    params = load_params(folder / "params.yaml")
    settings = tuning.tune_params(params)
    storage = f"sqlite:///{folder / 'optuna.db'}"
    studies = search.open_studies(storage, settings, models)
    fields = {"params_file": "p", "data_dir": "d", "threads": 1, "stop_event": "e"}
    driver = search.Search(studies, settings, fields, None, None, "code", params.titles, {},
                           search.recorded_searches(storage, studies, params))
    queue, rng, ended = driver.start(), random.Random(order_seed), 0
    while queue:
        if stop_after is not None and ended == stop_after:
            return queue
        task = queue.pop(rng.randrange(len(queue)))
        if task.number < 0:
            epochs = task.recipe["epochs"]
            value = 0.9 if headroom_lift is None else driver.chosen(task.model).value + headroom_lift[task.model]
            outcome = TrialOutcome([value] * epochs, value, epochs, 1.0, "cpu")
        elif (task.model, task.number) in fail:
            outcome = TrialOutcome(error="training diverged", cpu="cpu")
        else:
            curve = [made_up_value(task.model, task.number, e) for e in range(1, task.until_epoch + 1)]
            outcome = TrialOutcome(curve, max(curve), len(curve), float(task.until_epoch), "cpu")
        queue += driver.done(task, outcome)
        ended += 1
    return []


def states(folder, model="resnet"):
    import optuna

    study = optuna.load_study(study_name=f"{model}-search", storage=f"sqlite:///{folder / 'optuna.db'}")
    return [(t.number, t.state.name, len(t.intermediate_values), t.value) for t in study.trials]


@pytest.fixture
def decisions(tmp_path, monkeypatch):
    def make(name, **tune):
        folder = tmp_path / name
        folder.mkdir()
        write_params(folder, **{"configurations": 12, "max_epochs": 9, **tune})
        return folder

    monkeypatch.chdir(tmp_path)
    return make


def test_the_decisions_are_the_same_whatever_order_the_tasks_end_in_and_a_killed_driver_goes_on(decisions,
                                                                                              monkeypatch):
    outcomes = []
    for order_seed in (0, 1, 2):
        folder = decisions(f"order-{order_seed}")
        monkeypatch.chdir(folder)
        drive(folder, models=("resnet",), order_seed=order_seed)
        outcomes.append(states(folder))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    found = outcomes[0]
    assert [s for _, s, _, _ in found].count("COMPLETE") >= 1 and [s for _, s, _, _ in found].count("PRUNED") >= 6
    assert all(epochs in (1, 3, 9) for _, _, epochs, _ in found)
    # promoted at rung 1 exactly when in the top third of the trials before it (ASHA's rule, Optuna's pruner)
    first = [made_up_value("resnet", n, 1) for n in range(12)]
    for number, _, epochs, _ in found:
        earlier = sorted(first[:number + 1], reverse=True)
        keep = max(1, len(earlier) // 3)
        assert (epochs > 1) == (first[number] >= earlier[keep - 1])

    killed = decisions("killed")
    monkeypatch.chdir(killed)
    assert drive(killed, models=("resnet",), order_seed=5, stop_after=9)  # tasks were left running
    drive(killed, models=("resnet",), order_seed=6)  # a new driver on the same storage
    assert states(killed) == found
    headroom = json.loads((killed / "metrics/tuning/headroom.json").read_text())
    assert headroom["resnet"]["epochs"] == 18 and headroom["resnet"]["chosen_trial"] == max(
        (t for t in found if t[1] == "COMPLETE"), key=lambda t: (t[3], -t[0]))[0]


def test_trial_i_draws_the_same_recipe_for_a_model_searched_later(decisions, monkeypatch):
    folder = decisions("later")
    monkeypatch.chdir(folder)
    drive(folder, models=("resnet", "cnn"))
    drive(folder, models=("resnet", "cnn", "resnet_small"))
    rows_by_model = {model: rows(model) for model in ("resnet", "cnn", "resnet_small")}
    for number in range(12):
        recipes = [[rows_by_model[m][number][c] for c in RECIPE_COLUMNS] for m in rows_by_model]
        assert recipes[0] == recipes[1] == recipes[2]
    assert len({row["optimizer"] for row in rows_by_model["cnn"]}) == 2  # both optimizers drawn


def test_the_recipe_file_holds_only_finished_searches_and_a_model_searched_later_keeps_the_others(
        decisions, monkeypatch):
    import optuna

    folder = decisions("finished", configurations=6, max_epochs=3)
    monkeypatch.chdir(folder)
    recipe_file, record_file = Path("metrics/tuning/recipe.yaml"), Path("metrics/tuning/tuning.json")
    drive(folder, models=("resnet", "cnn"), headroom_lift={"resnet": 0.01, "cnn": 0.0})
    assert set(yaml.safe_load(recipe_file.read_text())) == {"cnn"}  # ResNet18 gained 1 point more: not converged
    headroom = json.loads(Path("metrics/tuning/headroom.json").read_text())
    assert [headroom[m]["converged"] for m in ("resnet", "cnn")] == [False, True]

    drive(folder, models=("resnet_small",), headroom_lift={"resnet_small": 0.0})  # make tune MODELS=resnet_small
    record = json.loads(record_file.read_text())
    assert list(record["models"]) == ["resnet", "cnn", "resnet_small"]
    later = optuna.load_study(study_name="resnet_small-search", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert later.user_attrs["spaces"] == [{"from_trial": 0, "space": SPACE}]  # its trials: the others' copies
    assert set(yaml.safe_load(recipe_file.read_text())) == {"cnn", "resnet_small"}

    write_params(folder, configurations=9, max_epochs=3)  # more configurations: the searches go on
    assert drive(folder, models=("cnn",), stop_after=0)  # killed before any task ended
    assert not recipe_file.exists()  # no model has finished the longer search
    assert {m: s["configurations"] for m, s in json.loads(record_file.read_text())["models"].items()} == {
        "resnet": 6, "cnn": 9, "resnet_small": 6}


def test_a_failing_trial_is_recorded_with_its_reason_and_the_search_goes_on(decisions, monkeypatch):
    folder = decisions("failing")
    monkeypatch.chdir(folder)
    drive(folder, fail={("resnet", 0), ("resnet", 3)})
    resnet = rows("resnet")
    assert [resnet[n]["state"] for n in (0, 3)] == ["FAIL", "FAIL"]
    assert resnet[0]["fail_reason"] == "training diverged"
    assert all(row["state"] in ("COMPLETE", "PRUNED") for row in resnet if row["number"] not in ("0", "3"))
    summary = json.loads(open("metrics/tuning/tuning.json").read())["models"]["resnet"]
    assert summary["failed"] == 2 and summary["running"] == 0 and summary["chosen_trial"] not in (0, 3)


def test_the_curve_is_the_best_of_the_first_n_trials_with_a_band_that_falls_when_the_top_is_one_trial():
    class Trial:
        def __init__(self, value, hours):
            self.value, self.state = value, type("State", (), {"name": "COMPLETE" if value else "PRUNED"})()
            self.user_attrs = {"train_cpu_seconds": hours * 3600}

    trials = [Trial(0.80, 1), Trial(None, 0.5), Trial(0.90, 1), *[Trial(0.81, 1) for _ in range(20)]]
    curve = search_record.search_curve(trials)
    assert [p.best for p in curve[:3]] == [0.80, 0.80, 0.90] and curve[2].cpu_hours == pytest.approx(2.5)
    last = curve[-1]
    assert last.best == 0.90 and last.high == 0.90 and last.low == pytest.approx(0.81)  # 0.90 is one trial of 23
    assert curve[1].none_drawn == pytest.approx(0.25, abs=0.03)  # two draws from (0.80, pruned): both pruned 1 in 4


def test_the_band_stays_defined_when_successive_halving_leaves_few_trials_complete():
    class Trial:
        def __init__(self, value):
            self.value, self.state = value, type("State", (), {"name": "COMPLETE" if value else "PRUNED"})()
            self.user_attrs = {"train_cpu_seconds": 60.0}

    trials = [Trial(0.92), Trial(0.93), *[Trial(None) for _ in range(58)]]
    none_complete = search_record.search_curve(trials[2:])[-1]
    assert none_complete == search_record.CurvePoint(58, pytest.approx(58 / 60), None, None, None)
    last = search_record.search_curve(trials)[-1]
    # a resample of 60 misses both complete trials with probability (58/60)^60, about 0.13; among those that draw
    # one, the worse alone in about 0.27 of them: the band spans both
    assert last.best == 0.93 and last.high == 0.93 and last.low == 0.92
    assert last.none_drawn == pytest.approx((58 / 60) ** 60, abs=0.02)


def test_the_rungs_must_end_at_the_maximum(decisions):
    from fashion_compare.errors import ParamsError

    folder = decisions("rungs", max_epochs=10)
    with pytest.raises(ParamsError, match=r"tune: .*max_epochs 10 is not min_epochs 1 times a power"):
        tuning.tune_params(load_params(folder / "params.yaml"), "params.yaml")


def test_each_make_tune_that_trains_adds_its_wall_time_and_a_damaged_record_is_one_line(decisions, monkeypatch):
    from fashion_compare.errors import PipelineError

    folder = decisions("sessions", configurations=2)
    monkeypatch.chdir(folder)
    params = load_params("params.yaml")
    settings = tuning.tune_params(params)
    studies = search.open_studies(f"sqlite:///{folder / 'optuna.db'}", settings, ("resnet",))
    fields = {"params_file": "p", "data_dir": "d", "threads": 1, "stop_event": "e"}

    def driver():
        return search.Search(studies, settings, fields, None, None, "code", params.titles, {})

    for jobs in (2, None):  # two runs that trained: here, then on a cluster
        run = driver()
        run.session.begin(jobs, "a CPU")
        run.write()
        run.write()  # its later writes update its own entry
    recorded = sessions.load_sessions(search.SESSIONS_FILE, "make tune")
    assert [(s.jobs, s.cpu) for s in recorded] == [(2, "a CPU"), (None, "a CPU")]
    assert all(s.wall_seconds >= 0 and s.started.endswith("+00:00") for s in recorded)
    driver().write()  # a run that trained nothing
    assert sessions.load_sessions(search.SESSIONS_FILE, "make tune") == recorded
    search.SESSIONS_FILE.write_text('[{"started": "2026-12-07T19:00:00+00:00"}]')
    with pytest.raises(PipelineError, match=r"^metrics/tuning/sessions.json: not make tune's list of sessions \(.*\); "
                                            r"restore it \(git checkout -- metrics/tuning/sessions.json\)$"):
        sessions.load_sessions(search.SESSIONS_FILE, "make tune")


def test_a_widened_space_keeps_the_trials_so_far_draws_the_next_from_it_and_a_later_model_gets_them_all(
        decisions, monkeypatch):
    """A chosen recipe at an edge: params.yaml's space widened and more configurations; the trials so far stay as
    drawn, the new ones come from the wider space, the same for every model, and a model searched later copies
    trial i whichever space it came from. A narrowed space is refused."""
    from fashion_compare.errors import PipelineError

    folder = decisions("widen", configurations=6)
    monkeypatch.chdir(folder)
    drive(folder)
    before = {model: [[row[c] for c in RECIPE_COLUMNS] for row in rows(model)] for model in ("resnet", "cnn")}
    wide = {**SPACE, "optimizer": {"adamw": {"lr": {"low": 0.0005, "high": 0.03}}, "sgd": SPACE["optimizer"]["sgd"]},
            "weight_decay": {"low": 1e-7, "high": 1e-2}}
    write_params(folder, configurations=9, max_epochs=9, space=wide)
    drive(folder)
    after = {model: [[row[c] for c in RECIPE_COLUMNS] for row in rows(model)] for model in ("resnet", "cnn")}
    assert {model: recipes[:6] for model, recipes in after.items()} == before  # the trials so far, as drawn
    assert after["resnet"] == after["cnn"] and len(after["resnet"]) == 9  # trial i the same for both
    assert all(row["state"] in ("COMPLETE", "PRUNED") for row in rows("cnn"))
    import optuna

    spaces = optuna.load_study(study_name="cnn-search", storage="sqlite:///optuna.db").user_attrs["spaces"]
    assert [(entry["from_trial"], entry["space"]["weight_decay"]["low"]) for entry in spaces] == [(0, 1e-5), (6, 1e-7)]

    drive(folder, models=("resnet_small",))  # searched later: every trial copied, from either space
    assert [[row[c] for c in RECIPE_COLUMNS] for row in rows("resnet_small")] == after["resnet"]

    write_params(folder, configurations=9, max_epochs=9, space={**wide, "batch_size": [64]})
    with pytest.raises(PipelineError, match="holds a search of other settings for resnet .*a space narrowed"):
        drive(folder)
