"""README.md and docs/*.md, rendered from docs/templates/ and the committed results (`make docs`).

Every measured figure of the documentation is a Jinja expression in its template that names the file and the
field it comes from, for example `{{ study.accuracy_gain.mean | f("+.2f", 100) }}` after
`{% set study = json("metrics/study.json") %}`; the rendered files are committed, and tests/test_docs.py
renders every template again and requires the committed text, byte for byte. So a figure changed by hand in a
rendered file fails the tests, and so does a committed result that changed without its documentation. A
template holds no bare measured figure: those it quotes from elsewhere (Fashion-MNIST's benchmark table) are
declared in QUOTED with their source, and what is not a measurement (a version, a count by construction) in
NOT_MEASURED.

    python -m fashion_compare.docs           # render every template onto its file
    python -m fashion_compare.docs --check   # exit 1 naming each file that differs from its rendering
"""

import argparse
import csv
import functools
import io
import json as json_module
import re
import sys
from pathlib import Path

import yaml as yaml_module

from .errors import PipelineError, exit_on_error
from .files import write_text

TEMPLATES = Path("docs/templates")
RENDERED = {"README.md.j2": "README.md", **{f"{name}.md.j2": f"docs/{name}.md" for name in
                                            ("method", "performance", "experiments", "team", "troubleshooting")}}
HEADER = "<!-- Rendered by `make docs` from {template}: edit the template, not this file. -->\n"

# A figure that looks measured: a decimal, a number with thousands separators, or a whole number with a unit.
FIGURE = re.compile(r"(?<![\w.#/-])(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+)(?!\w|\.\d)"
                    r"|(?<![\w.#/×-])\d+"
                    r"(?= ?(?:(?:s|ms|min|h|GiB|MiB|tests|img/s|images/s|CPU-hours|points)\b|%|×(?!\d)))")
GOAL = re.compile(r"goal (?:[≥≤] |under )?$")  # a goal is a figure after "goal", not a measurement
# Figures quoted from elsewhere, each with its source (the text says that it quotes them); a key is the text
# that starts at the figure.
QUOTED = {**dict.fromkeys(("0.949", "0.919", "0.923", "0.920"),
                          "Fashion-MNIST's benchmark table, github.com/zalandoresearch/fashion-mnist README"),
          "3 points apart": "0.949 - 0.919, the quoted benchmark table's two figures"}
# Figures that are not measurements, with what they are; a key is the text that starts at the figure.
NOT_MEASURED = {
    "3.10": "the oldest Python the project supports (pyproject.toml)",
    "3.67": "DVC's version, pinned in pyproject.toml (3.67.1)",
    "3.17": "MLflow's version, pinned in pyproject.toml (3.17.2)",
    "0.0005": "an example lr in a command", "0.001": "an example lr in a command",
    "0.002": "an example lr in a command", "0.004": "an example lr in a command",
    "0.01": "an example lr in a command", "0.005": "an example margin in a command",
    "1.0`": "a bad value in params.yaml, in troubleshooting's table",
    "20.0`": "a bad value in params.yaml, in troubleshooting's table",
    "2,000 studies": "the simulations per setting of tests/test_uncertainty.py's coverage test",
    "95 % interval to cover": "the level tests/test_uncertainty.py's coverage test checks",
    "97 % of the\ntime": "the coverage test's bounds (93-97 %)",
    "0.48, 1]": "the exact (Clopper-Pearson) 95 % interval of 5 successes in 5: arithmetic, not a measurement",
    "0.5:": "Almost Stochastic Order's threshold",
    "0.01 is 1 point": "how a fraction reads as points",
    "30 s": "data.py's default download timeout (FASHION_MNIST_TIMEOUT)",
    "32 MiB": "the mallopt threshold of process.keep_freed_memory",
    "15 % of its log range": "the search's edge rule (search_record.model_search), issue 42's",
    "1.5 times as fast": "the speed-up bf16 must reach before a recipe uses it, issue 43's bar",
}


@functools.cache
def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise PipelineError(f"{path}: cannot read it ({error.strerror}); a template names it") from None


def json(path: str):
    """A committed JSON file, as nested dicts and lists (Jinja's `a.b` reads a key)."""
    return json_module.loads(_read(path))


def yaml(path: str):
    return yaml_module.safe_load(_read(path))


def csv_rows(path: str) -> list[dict]:
    """A committed CSV file's rows, each a dict of strings (Jinja's `float` filter reads a number)."""
    return list(csv.DictReader(io.StringIO(_read(path))))


def f(value, spec: str, scale=1):
    """`value` × `scale` in Python's format `spec` ("+.2f", ".4f", ",d", ".3g")."""
    if value is None:
        raise PipelineError("a template formats a field that is null")
    value = value * scale
    return format(round(value) if spec.endswith("d") else value, spec)


def log_position(value: float, low: float, high: float) -> float:
    """Where `value` sits in the log range [low, high]: 0 at low, 1 at high (the search's edge rule)."""
    from .tuning import LogRange

    return LogRange(low=low, high=high).position(value)


def span(low_high) -> str:
    """A range of whole numbers: (23.4, 25.1) -> "23–25"."""
    low, high = low_high
    return f"{round(low)}–{round(high)}"


@functools.cache
def titles() -> dict:
    """Each model's title, params.yaml's."""
    from .params import load_params

    return load_params().titles


def study_tables(path: str) -> str:
    """A seed study's tables, as plots/study*/SUMMARY.md prints them (reports.study_tables)."""
    from . import reports, results

    return "\n".join(reports.study_tables(results.load(results.StudyResult, path), titles()))


def one_run_tables(path: str) -> str:
    """One run's model and per-class tables, as plots/compare/SUMMARY.md prints them (reports.comparison_tables)."""
    from . import reports, results

    return "\n".join(reports.comparison_tables(results.load(results.Comparison, path), titles()))


def seed_groups(path: str) -> list[dict]:
    """A study's seeds grouped by the CPU kind each ran on (its run record), in seed order of first appearance:
    {"cpu": label, "seeds": [...], "minutes": {model: (min, max)}} from each seed's training seconds."""
    from . import results

    groups = {}
    for row in results.load(results.StudyResult, path).per_seed:
        group = groups.setdefault(row.run.cpu_kind.label(), {"seeds": [], "seconds": {}})
        group["seeds"].append(row.seed)
        for model, seconds in row.run.train_seconds.items():
            group["seconds"].setdefault(model, []).append(seconds)
    return [{"cpu": label, "seeds": group["seeds"],
             "minutes": {model: (min(values) / 60, max(values) / 60) for model, values in group["seconds"].items()}}
            for label, group in groups.items()]


def finished_seeds(recipe: str) -> list[int]:
    """The seeds of a recipe's study whose folders hold results, before the study is aggregated too."""
    from .seed_folders import Recipe

    return sorted(int(path.parent.name) for path in Recipe(recipe).seeds_dir.glob("*/predictions.csv"))


def study_cost(recipe: str) -> dict:
    """A recipe's study so far, from its seed folders (aggregated or not): the seeds with results, each model's
    training hours (the sum of the seeds' train_seconds, one thread per seed), the CPU kinds and code fingerprints
    they ran on, and the timed `make study` sessions (sessions.py)."""
    from .seed_folders import Recipe, read_run_file
    from .sessions import load_sessions

    folders = Recipe(recipe)
    runs = [read_run_file(path.parent) for path in sorted(folders.seeds_dir.glob("*/predictions.csv"))]
    hours = {}
    for run in runs:
        for model, seconds in run.train_seconds.items():
            hours[model] = hours.get(model, 0.0) + seconds / 3600
    return {"seeds": sorted(run.seed for run in runs), "hours": hours,
            "cpus": sorted({run.cpu_kind.label() for run in runs}), "codes": sorted({run.code for run in runs}),
            "sessions": load_sessions(folders.sessions_file, "make study")}


def answer_table(studies: dict) -> str:
    """The README's answer table: {recipe title: its study's file, or a sentence saying why it has none}."""
    from . import reports, results

    return reports.answer_table({title: results.load(results.StudyResult, path) if Path(path).is_file() else path
                                 for title, path in studies.items()}, titles())


def environment():
    import jinja2

    from . import engine, seed_folders, study, tools

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False,
                             extensions=["jinja2.ext.do"])
    env.globals.update(json=json, yaml=yaml, csv_rows=csv_rows, exists=lambda path: Path(path).is_file(),
                       study_tables=study_tables,
                       one_run_tables=one_run_tables, answer_table=answer_table, seed_groups=seed_groups, titles=titles,
                       finished_seeds=finished_seeds, log_position=log_position, study_cost=study_cost,
                       pilot_seeds=seed_folders.PILOT_SEEDS,
                       code_fingerprint=lambda: tools.code_fingerprint(root=Path(__file__).resolve().parents[2]),
                       engine=engine, planning_power=study.PLANNING_POWER, max_planned_seeds=study.MAX_PLANNED_SEEDS)
    env.filters.update(f=f, span=span)
    return env


def render(template: str) -> str:
    import jinja2

    try:
        body = environment().get_template(template).render()
    except jinja2.TemplateError as error:
        where = f"{TEMPLATES / template}:{error.lineno}" if getattr(error, "lineno", None) else TEMPLATES / template
        raise PipelineError(f"{where}: {error.message}") from None
    return HEADER.format(template=TEMPLATES / template) + body


def bare_figures(template: str) -> list[str]:
    """The measured-looking figures a template writes as text (outside its expressions), but for the declared
    quotes and non-measurements: each is 'line: figure'."""
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text,
                  flags=re.DOTALL)
    excused = (*QUOTED, *NOT_MEASURED)
    return [f"{text[:match.start()].count(chr(10)) + 1}: {match.group(0)}" for match in FIGURE.finditer(text)
            if not any(text.startswith(key, match.start()) for key in excused)
            and not GOAL.search(text[max(0, match.start() - 12):match.start()])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is not its rendering")
    args = parser.parse_args(argv)
    stale = []
    for template, target in RENDERED.items():
        text = render(template)
        if Path(target).is_file() and Path(target).read_text(encoding="utf-8") == text:
            continue
        stale.append(target)
        if not args.check:
            write_text(target, text)
    if args.check and stale:
        print(f"error: {', '.join(stale)}: not what docs/templates/ renders from the committed files; run `make "
              "docs` (edit the templates, not the rendered files)", file=sys.stderr)
        return 1
    print("\n".join(f"rendered {target}" for target in stale) or "every document is its rendering")
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_error(main)())
