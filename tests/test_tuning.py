"""Tuning, small: 2 trials x 2 models on a subset, as Dask tasks on a local cluster of 2 workers; the test split
is not even there. A rerun goes on where it stopped; a failing trial is recorded and the search goes on."""

import csv
import json

import pytest
import yaml

from fashion_compare import data, tracking, tuning
from fashion_compare.params import load_params

pytestmark = pytest.mark.e2e

SPACE = {"lr": {"low": 0.0005, "high": 0.002, "log": True}, "weight_decay": [0.0, 0.01], "batch_size": [64, 128],
         "epochs": [1, 2], "schedule": ["constant", "step", "cosine"], "augment": ["none", "flip_translate_rotate"]}


@pytest.fixture
def workspace(tmp_path, monkeypatch, real_raw):
    """A folder with params.yaml (a 2-trial search) and data/prepared holding the train and val splits only."""
    splits = data.prepare(*real_raw, 0.25, 600, seed=42)
    data.save_splits({name: splits[name] for name in ("train", "val")}, tmp_path / "data/prepared")
    params = yaml.safe_load(open("params.yaml"))
    params["tune"] = {"trials": 2, "seed": 0, "subset": 200, "storage": None, "space": SPACE}
    params["tracking"]["log_model"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


def search(trials=2, **space):
    params = load_params("params.yaml")
    tune = tuning.tune_params(params).model_dump()
    tune.update(trials=trials, space={**tune["space"], **space})
    params = params.model_copy(update={"tune": tune})
    return tuning.tune(params, "params.yaml", "data/prepared", 2, None, tracking.connect(params.tracking))


def rows(model):
    with open(f"metrics/tuning/{model}_trials.csv") as handle:
        return list(csv.DictReader(handle))


def test_the_same_budget_for_both_models_on_validation_only_then_a_rerun_goes_on(workspace, capsys):
    result = search()
    for model in ("resnet", "cnn"):
        trials = rows(model)
        assert [row["state"] for row in trials] == ["COMPLETE", "COMPLETE"]
        assert all(0 < float(row["val_accuracy"]) <= 1 and float(row["train_cpu_seconds"]) > 0 for row in trials)
        assert result[model]["trials"] == 2 and result[model]["cpu_hours"] > 0
        assert result[model]["best_val_accuracy"] == max(float(row["val_accuracy"]) for row in trials)
    chosen = yaml.safe_load(open("metrics/tuning/recipe.yaml"))
    assert set(chosen) == {"resnet", "cnn"} and set(chosen["cnn"]) >= {"lr", "batch_size", "epochs", "augment"}
    assert open("plots/tuning/expected_best.png", "rb").read(4) == b"\x89PNG"
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("fashion-mnist")
    parent = client.search_runs([experiment.experiment_id], "attributes.run_name = 'Tuning (2 trials per model)'")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert len(children) == 4 and all(run.info.status == "FINISHED" for run in children)
    assert all("val/accuracy" in run.data.metrics for run in children)

    first = {model: rows(model) for model in ("resnet", "cnn")}
    search()  # done: nothing runs
    assert "2 trials per model done already" in capsys.readouterr().out
    study = tuning.open_studies(f"sqlite:///{workspace / tuning.STORAGE_FILE}",
                                tuning.tune_params(load_params()).space.model_dump_json(), ("resnet", "cnn"))["cnn"]
    stale = study.ask()  # a driver killed while this trial ran
    stale.suggest_float("lr", 0.0005, 0.002, log=True)
    search(trials=3)
    cnn = rows("cnn")
    assert cnn[:2] == first["cnn"] and len(rows("resnet")) == 3  # what ran stays; one more trial each
    assert cnn[2]["state"] == "FAIL" and cnn[2]["fail_reason"].startswith("interrupted")
    assert cnn[3]["state"] == "COMPLETE" and cnn[3]["lr"] == cnn[2]["lr"]  # asked again first
    assert json.loads(open("metrics/tuning/tuning.json").read())["models"]["cnn"]["trials"] == 3


def test_a_failing_trial_is_recorded_with_its_reason_and_the_search_goes_on(workspace):
    result = search(trials=2, lr={"low": 50.0, "high": 100.0, "log": False})  # every trial diverges
    for model in ("resnet", "cnn"):
        trials = rows(model)
        assert [row["state"] for row in trials] == ["FAIL", "FAIL"]
        assert all("training diverged" in row["fail_reason"] for row in trials)
        assert result[model]["trials"] == 2 and result[model]["chosen_recipe"] is None
    assert not (workspace / "metrics/tuning/recipe.yaml").exists()


def test_expected_best_of_n_trials_is_the_textbook_one():
    values = [0.1, 0.2, 0.3]
    assert tuning.expected_best(values, 1) == (pytest.approx(0.2), pytest.approx((2 / 3 / 100) ** 0.5))
    # two draws with replacement: P(max = 0.1) = 1/9, 0.2: 3/9, 0.3: 5/9
    assert tuning.expected_best(values, 2)[0] == pytest.approx((0.1 + 0.6 + 1.5) / 9)
    assert tuning.expected_best(values, 200)[0] == pytest.approx(0.3)
