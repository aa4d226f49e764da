"""Models are data: a contender declared in params.yaml only trains, is compared with the baseline through the
pipeline and a seed study (Holm across the contenders); the default pipeline predicts, bit for bit, what the code
before models were data predicted."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SMOKE_PARAMS, commit_all, copy_built, reset_to_head, run, tool_env

REPO = Path(__file__).resolve().parent.parent
BEFORE_CONTENDERS = "5f599bc"  # the last commit of the pair's layout (resnet and cnn sections)


@pytest.mark.study
def test_a_contender_declared_in_params_only_runs_through_the_pipeline_and_a_study(tmp_path, built_pipeline):
    """`cnn_sgd`, a second recipe of the CNN's architecture, declared in params.yaml and nowhere else, joins the
    contenders: the smoke pipeline trains it (train@cnn_sgd) and compares each contender with the baseline, and a
    2-seed smoke study decides each, Holm's across the two."""
    clone = copy_built(built_pipeline, tmp_path / "clone")
    reset_to_head(clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    sgd = json.loads(json.dumps(params["models"]["cnn"]))
    sgd["title"] = "Small CNN, SGD"
    sgd["recipe"].update(optimizer="sgd", lr=0.05, weight_decay=0.0005, schedule="cosine")
    params["models"]["cnn_sgd"] = sgd
    params["compare"]["contenders"] = ["resnet", "cnn_sgd"]
    params["study"] = {"seeds": [7, 8], "jobs": 1}
    params["tracking"]["enabled"] = False
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit_all(clone, "a third model, declared in params.yaml only")
    env = tool_env(OMP_NUM_THREADS="1")

    repro = run(["dvc", "repro"], clone, env=env).stdout
    assert "Running stage 'train@cnn_sgd'" in repro and "Running stage 'train@resnet'" not in repro  # cached
    compare = json.loads((clone / "metrics/compare.json").read_text())
    assert compare["baseline"] == "cnn" and list(compare["contenders"]) == ["resnet", "cnn_sgd"]
    assert all(c["verdict"]["family"] == 2 for c in compare["contenders"].values())
    assert json.loads((clone / "metrics/train/cnn_sgd.json").read_text())["model"] == "cnn_sgd"
    header = (clone / "data/predictions/test.csv").read_text().splitlines()[0]
    assert header.startswith("image,label,resnet_predicted") and "cnn_sgd_predicted" in header
    assert (clone / "plots/compare/f1_difference/cnn_sgd.csv").is_file()
    summary = (clone / "plots/compare/SUMMARY.md").read_text()
    assert "### Small CNN, SGD against Small CNN" in summary

    studied = run([sys.executable, "stages/study.py", "all"], clone, env=env).stdout
    assert "Is Small CNN, SGD worth its cost over Small CNN" in studied
    result = json.loads((clone / "metrics/study.json").read_text())
    assert result["seeds"] == [7, 8] and list(result["contenders"]) == ["resnet", "cnn_sgd"]
    assert list(result["models"]) == ["resnet", "cnn_sgd", "cnn"]
    for contender in result["contenders"].values():
        assert contender["verdict"]["decision"] in ("worth it", "not worth it", "undecided")
        assert contender["verdict"]["family"] == 2
    folder = clone / "metrics/study/seeds/7"
    assert (folder / "predictions.csv").read_text().splitlines()[0] == "image,label,resnet,cnn_sgd,cnn"
    assert {"train_resnet.json", "train_cnn_sgd.json", "train_cnn.json"} <= {p.name for p in folder.iterdir()}


def smoke_predictions(source: Path, folder: Path, models, env) -> str:
    """The sha256 of data/predictions/test.csv after prepare, each model's training and evaluate, run by the
    stage scripts of `source` (src/, stages/, params.yaml) on the smoke params, tracking off."""
    folder.mkdir()
    for item in ("src", "stages", "params.yaml"):
        subprocess.run(["cp", "-r", str(source / item), str(folder / item)], check=True)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    recipe = params["models"]["resnet"]["recipe"] if "models" in params else params["resnet"]
    recipe["epochs"] = 1
    params["data"]["subset"], params["epochs"] = SMOKE_PARAMS["data__subset"], SMOKE_PARAMS["epochs"]
    params["evaluate"]["latency_repeats"] = SMOKE_PARAMS["evaluate__latency_repeats"]
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["prepare.py"], *(["train.py", model] for model in models), ["evaluate.py"]):
        run([sys.executable, f"stages/{command[0]}", *command[1:]], folder, env=env)
    return hashlib.sha256((folder / "data/predictions/test.csv").read_bytes()).hexdigest()


@pytest.mark.long
def test_the_default_pipeline_predicts_what_the_pairs_code_predicted(tmp_path, real_raw):
    """The smoke pipeline's predictions file (both models' classes and probabilities), byte for byte: today's code
    against the last commit of the pair's layout, the same stages, params and threads on this machine."""
    if subprocess.run(["git", "cat-file", "-e", f"{BEFORE_CONTENDERS}^{{commit}}"], cwd=REPO).returncode != 0:
        pytest.skip(f"this clone lacks commit {BEFORE_CONTENDERS} (a shallow clone)")
    before = tmp_path / "before"
    before.mkdir()
    archive = subprocess.run(["git", "archive", BEFORE_CONTENDERS, "src", "stages", "params.yaml"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    env = tool_env(OMP_NUM_THREADS="1")
    old = smoke_predictions(before, tmp_path / "old", ("resnet", "cnn"), env)
    new = smoke_predictions(REPO, tmp_path / "new", ("cnn", "resnet"), env)
    assert new == old
