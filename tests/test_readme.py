"""README.md's results are read from the committed metrics: its tables must be the ones the pipeline writes."""

import json
import re
from pathlib import Path

import pytest

from fashion_compare import comparison, results, study

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def data_rows(markdown: str) -> list:
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| model")
            and not line.startswith("| seed |") and not line.startswith("| class")
            and not line.startswith("| accuracy gain, points")]


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_the_study_tables_are_those_of_metrics_study_json():
    result = results.load(results.StudyResult, REPO / "metrics/study.json")
    rows = data_rows(study.study_summary(result))
    assert len(rows) == 2 + 4 + result.k + 10  # models, standard errors, seeds, classes
    missing = [row for row in rows if row not in README]
    assert not missing, missing


@pytest.mark.parametrize("path", ["metrics/study.json", "metrics/study_tuned.json"])
def test_the_answer_on_the_first_screen_is_each_studys_verdict(path):
    import yaml

    if path.endswith("_tuned.json") and not (REPO / path).is_file():
        pytest.skip("the tuned study has not run")
    result = results.load(results.StudyResult, REPO / path)
    planned = yaml.safe_load((REPO / "params.yaml").read_text())["study"]["seeds"]
    first_screen = " ".join("\n".join(README.splitlines()[:40]).split())  # lines wrapped anywhere
    gain, verdict = result.accuracy_gain, result.verdict
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
    rows = data_rows(comparison.one_run_summary(result))
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


# Figures in README.md and docs/ that are not measurements, with what they are.
NOT_MEASURED = {"3.67": "DVC's version (3.67.1)", "2,250": "ResNet18's steps per epoch, 45,000 images / batch 20",
                **dict.fromkeys(("0.949", "0.919", "0.923", "0.920"),
                                "Fashion-MNIST's benchmark table (zalandoresearch/fashion-mnist README): quoted")}
FIGURE = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.#/-])\d+\.\d+(?![\w.])")


def committed_values() -> list:
    """Every number in the committed metrics files (JSON leaves and CSV cells; the per-image predictions left
    out), sorted."""
    import csv

    values = set()

    def walk(node):
        if isinstance(node, bool):
            return
        if isinstance(node, (int, float)):
            values.add(float(node))
        elif isinstance(node, dict):
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for path in (REPO / "metrics").glob("**/*.json"):
        walk(json.loads(path.read_text(encoding="utf-8")))
    for path in (REPO / "metrics").glob("**/*.csv"):
        if path.name != "predictions.csv":
            with path.open(encoding="utf-8") as handle:
                for cell in (cell for row in csv.reader(handle) for cell in row):
                    try:
                        values.add(float(cell))
                    except ValueError:
                        pass
    return sorted(values)


def test_every_figure_in_readme_and_docs_is_read_from_a_committed_file():
    """A measured figure (a decimal, or thousands with a separator) must be a value of a committed metrics file at
    the precision shown: as it is, as points or per cent (x 100), in minutes (/ 60), hours (/ 3600) or per
    thousand; a figure nobody can trace fails here."""
    values = committed_values()
    shown = {digits: {round(sign * value * scale, digits) for value in values for sign in (1, -1)
                      for scale in (1, 100, 1 / 60, 1 / 3600, 1000)} for digits in range(7)}

    def traced(figure: str) -> bool:
        plain = figure.replace(",", "")
        digits = len(plain.split(".")[1]) if "." in plain else 0
        return float(plain) in shown.get(digits, set())

    untraced = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for match in FIGURE.finditer(text):
            if match.group(0) not in NOT_MEASURED and not traced(match.group(0)):
                untraced.append(f"{doc.name}:{text[:match.start()].count(chr(10)) + 1}: {match.group(0)}")
    assert not untraced, untraced


RECIPES = {"reference (the original write-up's)": "metrics/study.json",
           "tuned (make tune: the same budget for each model)": "metrics/study_tuned.json"}


def test_the_answer_table_holds_both_recipes_studies_as_committed():
    studies = {recipe: results.load(results.StudyResult, REPO / path) if (REPO / path).is_file() else None
               for recipe, path in RECIPES.items()}
    assert study.answer_table(studies) in README
