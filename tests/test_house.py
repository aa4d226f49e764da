"""The house of src/fashion_compare, read from its source: imports form no cycle (those inside functions count),
the tool layer imports no statistics, no module is over 400 lines, the modules that drive seeds stay within 600
lines together, and no model is named in the code outside models.py (models are params.yaml's data)."""
import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "fashion_compare"
TOOL_LAYER = {"errors", "files", "process", "tools", "dvc_remote"}  # git, dvc, fingerprint, CPU kind, environment
STATISTICS = {"study", "comparison", "uncertainty", "results", "reports"}
SEED_DRIVERS = {"seed_task", "study_runs", "seed_folders"}  # engine.py is the generic Dask runner trials share
MAX_MODULE_LINES, MAX_SEED_DRIVER_LINES = 400, 600


def modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PACKAGE.glob("*.py"))}


def imports(path: Path, known) -> set[str]:
    """The package's modules `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 1 and node.module is None or node.module == "fashion_compare":
            found |= {alias.name for alias in node.names if alias.name in known}
        elif node.level == 1:
            found.add(node.module.split(".")[0])
        elif node.module and node.module.startswith("fashion_compare."):
            found.add(node.module.split(".")[1])
    return found - {path.stem}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def cycle(graph) -> list:
    """One import cycle as a list of modules, or [] (a depth-first search)."""
    state, stack = {}, []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for imported in sorted(graph.get(name, ())):
            if state.get(imported) == "open":
                return stack[stack.index(imported):] + [imported]
            if imported not in state and (found := visit(imported)):
                return found
        state[name] = "done"
        stack.pop()
        return []

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return []


def test_the_cycle_finder_finds_a_cycle_and_passes_a_layered_graph():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle():
    assert cycle(import_graph()) == []


def test_the_tool_layer_imports_no_statistics_and_nothing_above_it():
    graph = import_graph()
    assert TOOL_LAYER <= set(graph) and STATISTICS <= set(graph)
    for name in TOOL_LAYER:
        assert graph[name] <= TOOL_LAYER, f"{name}.py imports {sorted(graph[name] - TOOL_LAYER)}"


def test_no_module_over_400_lines_and_the_seed_drivers_within_600():
    lines = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in lines.items() if n > MAX_MODULE_LINES} == {}
    assert sum(lines[name] for name in SEED_DRIVERS) <= MAX_SEED_DRIVER_LINES, {n: lines[n] for n in SEED_DRIVERS}


def test_no_model_is_named_in_the_code_outside_models_py():
    declared = set(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["models"])
    assert {"resnet", "cnn"} <= declared
    for name, path in modules().items():
        if name == "models":
            continue
        strings = {node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not strings & declared, f"{path.name} names {sorted(strings & declared)}"
