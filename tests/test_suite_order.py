"""conftest.py hands the longest end-to-end tests of `make test` out first, by name: a renamed or moved test
would silently fall to the end of the queue (one pytest-xdist worker then runs it alone while the other idles)."""
import ast
import re
from pathlib import Path

from conftest import LONGEST_END_TO_END

TESTS = Path(__file__).resolve().parent


def marker_expression(target: str) -> str:
    """The pytest -m expression of a Makefile target's recipe: the one place the tiers are named."""
    makefile = (TESTS.parent / "Makefile").read_text()
    recipe = re.search(rf"^{target}:.*?\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    return re.search(r'pytest .*-m "([^"]+)"', recipe).group(1)


def deselected_by_make_test() -> set[str]:
    """The markers `make test` leaves out ("not study and not cluster and ..."); `make test-study` runs exactly
    those ("study or cluster or ..."): CI runs both, so every test runs once."""
    deselected = set(re.findall(r"\bnot (\w+)", marker_expression("test")))
    assert deselected == set(marker_expression("test-study").split(" or ")), "the two tiers name other markers"
    return deselected


def markers(decorators) -> set[str]:
    """The `pytest.mark.<name>` names among decorators or a module's pytestmark value."""
    return {node.attr for node in decorators for node in ast.walk(node)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark"}


def defined_tests() -> dict[str, set[str]]:
    """Every test function of tests/, with the markers it carries (its own and its module's)."""
    found = {}
    for path in sorted(TESTS.glob("test_*.py")):
        module = ast.parse(path.read_text())
        module_markers = set()
        for node in module.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
                module_markers = markers([node.value])
        for node in module.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found[node.name] = module_markers | markers(node.decorator_list)
    return found


def test_the_longest_end_to_end_tests_are_named_as_they_are_in_make_test():
    functions, deselected = defined_tests(), deselected_by_make_test()
    assert deselected >= {"study", "cluster", "long"}, deselected
    assert set(LONGEST_END_TO_END) <= set(functions), set(LONGEST_END_TO_END) - set(functions)
    for name in LONGEST_END_TO_END:
        assert "e2e" in functions[name], name
        assert not deselected & functions[name], f"{name} runs in make test-study, not make test"
    assert "study" in functions[
        "test_a_killed_driver_takes_its_workers_with_it_and_the_rerun_resumes_without_training_twice"]
