"""README.md's results are read from the committed metrics: its tables must be the ones the pipeline writes."""

import json
import re
from pathlib import Path

from fashion_compare import comparison, study

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def data_rows(markdown: str) -> list:
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| model")
            and not line.startswith("| seed |") and not line.startswith("| class")]


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_the_study_tables_are_those_of_metrics_study_json():
    result = json.loads((REPO / "metrics/study.json").read_text())
    rows = data_rows(study.summary_markdown(result))
    assert len(rows) == 2 + result["k"] + 10
    missing = [row for row in rows if row not in README]
    assert not missing, missing


def test_the_answer_on_the_first_screen_is_the_study_verdict():
    result = json.loads((REPO / "metrics/study.json").read_text())
    first_screen = " ".join("\n".join(README.splitlines()[:40]).split())  # lines wrapped anywhere
    gain, superiority = result["accuracy_gain"], result["p_resnet_better"]
    answer = "**Yes.**" if result["verdict"]["deep_model_worth_it"] else "**No.**"
    assert answer in first_screen
    expected = (f"**{100 * gain['mean']:+.2f} points** of test accuracy (95 % t-interval "
                f"[{100 * gain['ci'][0]:+.2f}, {100 * gain['ci'][1]:+.2f}]")
    assert expected in first_screen
    assert f"paired t-test p = {result['paired_t_test']['p_value']:.2g}" in first_screen
    assert (f"P(ResNet18 > CNN) = {superiority['value']:.2f} (bootstrap over seeds [{superiority['ci'][0]:.2f}, "
            f"{superiority['ci'][1]:.2f}], exact [{superiority['exact_ci'][0]:.2f}, "
            f"{superiority['exact_ci'][1]:.2f}])") in first_screen
    assert f"Over {result['k']} paired training runs" in first_screen


def test_the_single_run_tables_are_those_of_metrics_compare_json():
    result = json.loads((REPO / "metrics/compare.json").read_text())
    rows = data_rows(comparison.summary_markdown(result))
    missing = [row for row in rows if row not in README]
    assert not missing, missing


def test_every_figure_the_readme_shows_is_committed():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (REPO / path).is_file(), path
    for path in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (REPO / path).is_file(), path
