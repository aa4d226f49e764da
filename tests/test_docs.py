"""README.md and docs/*.md are their templates rendered from the committed results (src/fashion_compare/docs.py):
a figure changed by hand, or a result that changed without its documentation, fails here."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_compare import docs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    docs._read.cache_clear()


def copy_of_the_documents_and_results(tmp_path) -> Path:
    copy = tmp_path / "repo"
    copy.mkdir()
    for path in ("README.md", "docs", "metrics", "plots", "params.yaml"):
        (shutil.copytree if (REPO / path).is_dir() else shutil.copy)(REPO / path, copy / path)
    return copy


@pytest.mark.parametrize("template, target", docs.RENDERED.items())
def test_each_document_is_its_template_rendered_from_the_committed_files(template, target):
    assert (REPO / target).read_text(encoding="utf-8") == docs.render(template), (
        f"{target} is not the rendering of docs/templates/{template}: edit the template and run `make docs`")


@pytest.mark.parametrize("template", docs.RENDERED)
def test_no_template_writes_a_measured_figure_by_hand(template):
    assert docs.bare_figures(template) == [], "write each measured figure as an expression naming its file and field"


def test_every_document_has_a_template_and_every_template_a_document():
    assert {path.name for path in (REPO / "docs/templates").iterdir()} == set(docs.RENDERED)
    assert {Path(target).name for target in docs.RENDERED.values() if target.startswith("docs/")} == \
        {path.name for path in (REPO / "docs").glob("*.md")}


@pytest.mark.parametrize("target, old, new", [("docs/method.md", "lr 0.002", "lr 0.005"),
                                              ("docs/method.md", "from +0.33 to +1.46", "from +0.13 to +1.46"),
                                              ("README.md", "**+0.68 points**", "**+0.78 points**"),
                                              ("docs/performance.md", "| 239 |", "| 293 |"),
                                              ("docs/team.md", "(within 10s)", "(within 20s)")])
def test_a_figure_changed_by_hand_in_a_copy_fails_the_check(tmp_path, target, old, new):
    copy = copy_of_the_documents_and_results(tmp_path)
    check = [sys.executable, "-m", "fashion_compare.docs", "--check"]
    assert subprocess.run(check, cwd=copy, capture_output=True).returncode == 0
    text = (copy / target).read_text(encoding="utf-8")
    assert old in text
    (copy / target).write_text(text.replace(old, new, 1), encoding="utf-8")
    result = subprocess.run(check, cwd=copy, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {target}: not what docs/templates/ renders from the committed files; "
                                      "run `make docs` (edit the templates, not the rendered files)")


def test_a_changed_result_fails_the_check_until_make_docs_renders_it(tmp_path):
    import json

    copy = copy_of_the_documents_and_results(tmp_path)
    tuning = json.loads((copy / "metrics/tuning_subset/tuning.json").read_text())
    tuning["models"]["cnn"]["cpu_hours"] = 1.2345
    (copy / "metrics/tuning_subset/tuning.json").write_text(json.dumps(tuning))
    run = [sys.executable, "-m", "fashion_compare.docs"]
    assert subprocess.run([*run, "--check"], cwd=copy, capture_output=True).returncode == 1
    assert subprocess.run(run, cwd=copy, capture_output=True).returncode == 0
    assert "took 1.23 CPU-hours for the CNN" in " ".join((copy / "README.md").read_text().split())
    assert subprocess.run([*run, "--check"], cwd=copy, capture_output=True).returncode == 0


def test_a_template_naming_a_missing_field_is_one_line_naming_the_template(tmp_path, monkeypatch):
    (tmp_path / "docs/templates").mkdir(parents=True)
    (tmp_path / "docs/templates/x.md.j2").write_text('{{ json("params.json").nothing }}\n')
    (tmp_path / "params.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    docs._read.cache_clear()
    with pytest.raises(docs.PipelineError, match=r"^docs/templates/x.md.j2(:1)?: 'dict object' has no attribute"):
        docs.render("x.md.j2")


def test_the_figure_pattern_finds_what_looks_measured_and_excuses_only_what_is_declared():
    found = [m.group(0) for m in docs.FIGURE.finditer(
        "took 474 s, 0.9165 and 11,175,370; 3×3 and 7×7 convolutions; +0.68. Up 5 % and 2.4× faster; seed 42")]
    assert found == ["474", "0.9165", "11,175,370", "0.68", "5", "2.4"]
