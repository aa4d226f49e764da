"""dvc.yaml lists, for every stage, the code that shapes its outputs: derived here from the imports of the
stage's script, followed through the package. A change to a module a stage imports must rerun the stage
(and turn a study's seeds stale), or DVC would call a pipeline "up to date" that the code no longer makes."""

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "fashion_compare"
PACKAGE_DIR = Path("src") / PACKAGE
# Imported by stages, but shaping no output: MLflow's connection and records, and error messages.
# dvc.yaml's header says so; a change to them reruns nothing.
SHAPES_NO_OUTPUT = {PACKAGE_DIR / "tracking.py", PACKAGE_DIR / "mlflow_store.py", PACKAGE_DIR / "records.py",
                    PACKAGE_DIR / "errors.py"}


def package_modules_imported(path: Path) -> set:
    """The package's module files that `path` imports anywhere (top level or inside a function)."""
    in_package = path.parent.name == PACKAGE
    found = set()
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and in_package:
                parts = [node.module] if node.module else []
            elif node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
                parts = node.module.split(".")[1:]
            else:
                continue
            found.add(PACKAGE_DIR / "__init__.py")
            if parts:
                found.add(PACKAGE_DIR / f"{parts[0]}.py")
            else:  # from . import a, b / from fashion_compare import a, CONSTANT
                for alias in node.names:
                    module = PACKAGE_DIR / f"{alias.name}.py"
                    found.add(module if (REPO / module).is_file() else PACKAGE_DIR / "__init__.py")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    found.add(PACKAGE_DIR / "__init__.py")
                    if len(parts) > 1:
                        found.add(PACKAGE_DIR / f"{parts[1]}.py")
    return found


def code_shaping(script: Path) -> set:
    """`script` and every package module it reaches through imports, but those that shape no output (whose
    own imports are not followed)."""
    shaping, todo = {script}, [script]
    while todo:
        for module in package_modules_imported(todo.pop()) - SHAPES_NO_OUTPUT - shaping:
            shaping.add(module)
            todo.append(module)
    return shaping


def test_every_stage_lists_the_code_that_shapes_its_outputs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # a foreach stage's body
        script = Path(stage["cmd"].split()[1])
        listed = {Path(dep) for dep in stage["deps"] if dep.endswith(".py")}
        needed = code_shaping(script)
        assert needed - listed == set(), f"{name}: dvc.yaml leaves out {sorted(map(str, needed - listed))}"
        unused = sorted(map(str, listed - needed))
        assert unused == [], f"{name}: dvc.yaml lists code it does not import: {unused}"


def test_the_derivation_follows_imports_and_skips_what_shapes_no_output(tmp_path):
    train = code_shaping(Path("stages/train.py"))
    assert PACKAGE_DIR / "models.py" in train  # imported inside a function (training.load_checkpoint)
    assert PACKAGE_DIR / "process.py" in train  # through training (the thread count)
    assert not {PACKAGE_DIR / "tracking.py", PACKAGE_DIR / "plots.py"} & train
    assert PACKAGE_DIR / "plots.py" in code_shaping(Path("stages/compare.py"))
