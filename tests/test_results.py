"""results.py: every committed result file reads into its dataclass and writes back byte for byte; what is not
one of them is refused in one line naming the file and the field."""

import json
from pathlib import Path

import pytest

from fashion_compare import comparison, reports, results
from fashion_compare.errors import PipelineError

REPO = Path(__file__).resolve().parent.parent
COMMITTED = [(path, results.StudyResult) for path in sorted(REPO.glob("metrics/study*.json"))] + \
    [(path, results.Comparison) for path in [REPO / "metrics/compare.json",
                                             *sorted(REPO.glob("metrics/study*/seeds/*/compare.json"))]] + \
    [(path, results.SeedRunFile) for path in sorted(REPO.glob("metrics/study*/seeds/*/run.json"))]


@pytest.mark.parametrize("path, kind", COMMITTED, ids=[str(path.relative_to(REPO)) for path, _ in COMMITTED])
def test_a_committed_result_round_trips_byte_for_byte(path, kind):
    text = path.read_text(encoding="utf-8")
    loaded = results.load(kind, path)
    assert isinstance(loaded, kind)
    assert results.to_json(loaded) == text


def test_the_committed_files_are_all_covered():
    assert len([kind for _, kind in COMMITTED if kind is results.StudyResult]) >= 1
    assert len([kind for _, kind in COMMITTED if kind is results.Comparison]) >= 11  # one run, and each seed's
    assert len([kind for _, kind in COMMITTED if kind is results.SeedRunFile]) >= 10


def test_results_are_frozen_and_consumers_read_attributes():
    study_result = results.load(results.StudyResult, REPO / "metrics/study.json")
    with pytest.raises(AttributeError):
        study_result.k = 3  # frozen: a result is what was computed
    assert study_result.per_seed[0].run.cpu_kind.label().endswith(study_result.per_seed[0].run.cpu_kind.isa)
    assert study_result.contenders["resnet"].verdict.bounds_sentence().startswith("its one-sided 95%")
    assert reports.study_summary(study_result, {}).startswith("# Seed study")
    one_run = results.load(results.Comparison, REPO / "metrics/compare.json")
    assert comparison.headline(one_run)["contenders"]["resnet"]["decision"] == \
        one_run.contenders["resnet"].verdict.decision


@pytest.mark.parametrize("edit, field", [
    (lambda data: data["contenders"]["resnet"]["verdict"].pop("decision"),
     "contenders.resnet.verdict.decision: field required"),
    (lambda data: data.update(k="ten"), "k: input should be a valid integer"),
    (lambda data: data["contenders"]["resnet"]["verdict"].update(p_worth_it=0.5),
     "contenders.resnet.verdict.p_worth_it: unexpected keyword argument"),
    (lambda data: data["contenders"]["resnet"]["accuracy_gain"].update(ci=[0.1]), "contenders.resnet.accuracy_gain.ci"),
    (lambda data: data.update(resnet_test_accuracy=0.9), "resnet_test_accuracy: unexpected keyword argument"),
])
def test_a_file_that_is_not_its_dataclass_is_refused_in_one_line(tmp_path, edit, field):
    data = json.loads((REPO / "metrics/study.json").read_text())
    edit(data)
    path = tmp_path / "study.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PipelineError) as error:
        results.load(results.StudyResult, path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a StudyResult (") and field in message and "\n" not in message


@pytest.mark.parametrize("name", ["reference", "tuned_subset"])
def test_each_committed_study_is_what_its_committed_predictions_give(name, monkeypatch):
    """The study recomputed from its seed folders (predictions, run records) by today's code is its committed
    file, figure for figure (its MLflow run id kept): the layout of contenders changed no figure."""
    from fashion_compare import study
    from fashion_compare.params import load_params
    from fashion_compare.seed_folders import Recipe
    from fashion_compare.study_aggregate import load_study

    monkeypatch.chdir(REPO)
    recipe = Recipe(name)
    committed = results.load(results.StudyResult, recipe.study_file)
    runs, failed = load_study(recipe, list(committed.seeds))
    result = study.aggregate(runs, load_params().compare, failed, max_seeds=recipe.max_planned_seeds)
    assert results.to_json(results.with_run_id(result, committed.mlflow_run_id)) == \
        recipe.study_file.read_text(encoding="utf-8")
