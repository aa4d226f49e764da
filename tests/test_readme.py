"""README.md's results are read from the committed metrics: its tables must be the ones the pipeline writes."""

import json
import re
from pathlib import Path

import pytest

from fashion_compare import reports, results
from fashion_compare.params import load_params

REPO = Path(__file__).resolve().parent.parent
TITLES = load_params(REPO / "params.yaml").titles
README = (REPO / "README.md").read_text(encoding="utf-8")


def data_rows(markdown: str) -> list:
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| model")
            and not line.startswith("| seed |") and not line.startswith("| class")
            and not line.startswith("| accuracy gain, points")]


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_the_study_tables_are_those_of_metrics_study_json():
    result = results.load(results.StudyResult, REPO / "metrics/study.json")
    rows = data_rows(reports.study_summary(result, TITLES))
    assert len(rows) == 2 + 4 + result.k + 10  # models, standard errors, seeds, classes
    missing = [row for row in rows if row not in README]
    assert not missing, missing


@pytest.mark.parametrize("path", ["metrics/study.json", "metrics/study_tuned_subset.json", "metrics/study_tuned.json"])
def test_the_answer_on_the_first_screen_is_each_studys_verdict(path):
    import yaml

    if path.endswith("_tuned.json") and not (REPO / path).is_file():
        pytest.skip("the tuned study has not run")
    result = results.load(results.StudyResult, REPO / path)
    planned = yaml.safe_load((REPO / "params.yaml").read_text())["study"]["seeds"]
    first_screen = " ".join("\n".join(README.splitlines()[:40]).split())  # lines wrapped anywhere
    gain, verdict = result.contenders["resnet"].accuracy_gain, result.contenders["resnet"].verdict
    assert f"**{verdict.decision.capitalize()}" in first_screen
    expected = (f"**{100 * gain.mean:+.2f} points** of test accuracy (95 % interval "
                f"[{100 * gain.ci[0]:+.2f}, {100 * gain.ci[1]:+.2f}]")
    assert expected in first_screen
    bound = {"lower": verdict.lower, "upper": verdict.upper}.get(verdict.deciding_bound)
    if bound is not None:
        assert f"**{100 * bound:+.2f}**" in first_screen
    assert f"P(gain ≥ margin) = {verdict.p_gain_at_least_margin:.2g}" in first_screen
    assert f"over {result.k} paired" in first_screen.lower()
    if path == "metrics/study.json" and result.k < len(planned):
        assert f"on the {result.k} of the {len(planned)} planned seeds run so far (interim" in first_screen


def test_the_single_run_tables_are_those_of_metrics_compare_json():
    result = results.load(results.Comparison, REPO / "metrics/compare.json")
    rows = data_rows(reports.comparison_summary(result, TITLES))
    missing = [row for row in rows if row not in README]
    assert not missing, missing


def test_every_figure_the_readme_shows_is_committed():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (REPO / path).is_file(), path
    for path in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (REPO / path).is_file(), path


def test_the_module_map_names_every_module_of_the_package():
    """src/fashion_compare/__init__.py points here for the map of the package."""
    block = README.split("## Where things live")[1].split("```")[1]
    named = set(re.findall(r"\b(\w+)\.py\b", block))
    modules = {path.stem for path in (REPO / "src/fashion_compare").glob("*.py") if path.stem != "__init__"}
    assert modules - named == set(), "modules the README's map leaves out"
    assert named - modules == set(), "names in the README's map that are no module"


RECIPES = {"reference (the original write-up's)": "metrics/study.json",
           "tuned on a fifth of the data (each model its own 12 trials)": "metrics/study_tuned_subset.json"}


def test_the_answer_table_holds_both_recipes_studies_as_committed_and_says_what_is_still_running():
    """The decided studies' rows as their files say; the full search's row with its progress from tuning.json, and
    the small stem's row saying it has not run, each with the command that goes on."""
    studies = {recipe: results.load(results.StudyResult, REPO / path) for recipe, path in RECIPES.items()}
    table = reports.answer_table(studies, TITLES)
    assert table.split("\n")[2:] == [line for line in README.splitlines() if line.startswith(tuple(
        f"| {recipe} |" for recipe in RECIPES))]
    search = json.loads((REPO / "metrics/tuning/tuning.json").read_text())
    full = f"| searched at full data (the same {search['settings']['configurations']} configurations for each model) |"
    row = next(line for line in README.splitlines() if line.startswith(full))
    seeds = sorted(path.parent.name for path in (REPO / "metrics/study_tuned/seeds").glob("*/predictions.csv"))
    if (REPO / "metrics/study_tuned.json").is_file():  # decided: its row as its file says
        study = results.load(results.StudyResult, REPO / "metrics/study_tuned.json")
        assert row.startswith(full) and row in reports.answer_table({full[2:-2]: study}, TITLES).split("\n")
    elif seeds:  # its study running: the seeds it has
        assert f"| running: its study, {len(seeds)} of the pilot's 5 seeds so far (`make study RECIPE=tuned`" in row
    else:  # the search running: its progress
        told = {model: found["configurations"] - found["running"] for model, found in search["models"].items()}
        assert (f"running: the search has decided {told['resnet']} of {search['settings']['configurations']} "
                f"configurations for ResNet18 and {told['cnn']} of") in row
    assert "| small-stem ResNet18 (3×3 stride-1 stem, no max-pool) | not run yet:" in README
    assert "`make tune MODELS=resnet_small`" in README
