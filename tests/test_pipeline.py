"""End to end: `dvc repro` and `dvc exp run` in a temporary git copy, on a small stratified subset, 1 epoch."""

import json
import sys
import time

import numpy as np
import pytest
from conftest import free_port, reset_to_head, run, set_params, tool_env

from fashion_compare import CLASS_NAMES, results

pytestmark = pytest.mark.e2e
MODELS = ("resnet", "cnn")


def load(repo, name):
    return json.loads((repo / name).read_text())


def client(repo):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def runs_by_name(repo, **filters):
    mlflow_client = client(repo)
    experiment = mlflow_client.get_experiment_by_name("fashion-mnist")
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
    return {r.info.run_name: r for r in mlflow_client.search_runs([experiment.experiment_id], query)}


def read_csv(path):
    import pandas as pd

    return pd.read_csv(path)


# ---------------------------------------------------------------- dvc repro

def test_every_stage_writes_its_outputs(repo):
    data = load(repo, "metrics/data.json")
    assert [data[s]["size"] for s in ("train", "val", "test")] == [450, 150, 100]
    assert data["val"]["class_counts"] == [15] * 10

    for model, parameters, batch in (("resnet", 11_175_370, 20), ("cnn", 1_475_338, 100)):
        train = load(repo, f"metrics/train/{model}.json")
        assert train["epochs"] == 1 and train["parameter_count"] == parameters
        assert 0.1 < train["best_val_accuracy"] <= 1 and train["train_seconds"] > 0 and train["mlflow_run_id"]
        assert (repo / "models" / f"{model}.pt").stat().st_size > 1000
        steps = read_csv(repo / f"plots/train/{model}_steps.csv")
        assert len(steps) == -(-450 // batch) and steps["step"].tolist() == list(range(1, len(steps) + 1))
        epochs = read_csv(repo / f"plots/train/{model}_epochs.csv")
        assert epochs.columns.tolist() == ["model", "epoch", "train_loss", "train_accuracy", "val_loss",
                                           "val_accuracy", "lr", "seconds"]
        assert epochs["val_accuracy"].iloc[-1] == pytest.approx(train["final_val_accuracy"])

    evaluation = load(repo, "metrics/evaluate.json")
    for model in MODELS:
        result = evaluation[model]
        assert list(result["per_class"]) == list(CLASS_NAMES)
        assert sum(c["support"] for c in result["per_class"].values()) == 100
        matrix = np.array(result["confusion_matrix"])
        assert matrix.shape == (10, 10) and matrix.sum() == 100
        assert result["accuracy"] == pytest.approx(np.trace(matrix) / 100)
        assert result["latency_ms_per_image"] > 0 and result["throughput_images_per_s"] > 0
        confusion = read_csv(repo / f"plots/evaluate/confusion_{model}.csv")
        assert len(confusion) == 100 and set(confusion["actual"]) <= set(CLASS_NAMES)
    predictions = read_csv(repo / "data/predictions/test.csv")
    assert len(predictions) == 100 and predictions["image"].tolist() == list(range(100))
    for model in MODELS:
        accuracy = (predictions[f"{model}_predicted"] == predictions["label"]).mean()
        assert accuracy == pytest.approx(evaluation[model]["accuracy"])
        probabilities = predictions[[f"{model}_p{k}" for k in range(10)]]
        assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
        assert np.allclose(probabilities.max(axis=1), predictions[f"{model}_probability"])
    for metric in ("precision", "recall", "f1"):
        rows = read_csv(repo / f"plots/compare/{metric}_per_class.csv")
        assert len(rows) == 20 and set(rows["model"]) == {"ResNet18", "Small CNN"}
        resnet_rows = rows[rows["model"] == "ResNet18"].set_index("class")
        assert resnet_rows["value"]["Trouser"] == pytest.approx(evaluation["resnet"]["per_class"]["Trouser"][metric])
        assert (rows["lower"] <= rows["value"] + 1e-12).all() and (rows["value"] <= rows["upper"] + 1e-12).all()

    compare = results.load(results.Comparison, repo / "metrics/compare.json")  # every field as results.py declares
    assert results.to_json(compare) == (repo / "metrics/compare.json").read_text()
    assert set(compare.models) == set(MODELS) and compare.baseline == "cnn" and list(compare.contenders) == ["resnet"]
    per_class = compare.contenders["resnet"].per_class
    assert list(per_class) == list(CLASS_NAMES)
    winners = {entry.winner for entry in per_class.values()}
    assert winners <= {"resnet", "cnn", "no significant difference"}
    verdict = compare.contenders["resnet"].verdict
    assert verdict.accuracy_gain == pytest.approx(evaluation["resnet"]["accuracy"] - evaluation["cnn"]["accuracy"])
    right = {m: predictions[f"{m}_predicted"] == predictions["label"] for m in MODELS}
    assert verdict.mcnemar.b == int((right["resnet"] & ~right["cnn"]).sum())
    assert verdict.mcnemar.c == int((~right["resnet"] & right["cnn"]).sum())
    assert verdict.decision in ("worth it", "not worth it", "undecided") and verdict.margin == 0.01
    headline = load(repo, "metrics/headline.json")
    gain = headline["contenders"]["resnet"]
    assert gain["mcnemar_p"] == verdict.mcnemar.p_value
    assert (gain["accuracy_gain_lower"], gain["accuracy_gain_upper"]) == verdict.accuracy_gain_ci
    assert "train_seconds" in load(repo, "metrics/cost.json")["models"]["resnet"]
    assert "train_seconds" not in headline["models"]["resnet"]
    for figure in ("precision", "recall", "f1", "f1_difference_resnet", "learning_curves"):
        assert (repo / f"plots/compare/figures/{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (repo / "plots/compare/SUMMARY.md").read_text()
    assert "## Verdict" in summary and f"{compare.models['resnet'].test_accuracy:.4f}" in summary
    assert "McNemar's exact test" in summary and "`compare.min_accuracy_gain`" in summary


def test_repro_again_is_a_no_op(repo):
    result = run(["dvc", "repro"], repo)
    assert "Running stage" not in result.stdout
    assert run(["dvc", "status", "--json"], repo).stdout.strip() == "{}"


def test_invalid_params_are_refused_before_any_work(repo):
    before = {p: (repo / p).read_bytes() for p in ("metrics/train/cnn.json", "models/cnn.pt")}
    runs_before = len(runs_by_name(repo))
    set_params(repo, models__cnn__recipe__batch_size=0)
    try:
        result = run([sys.executable, "stages/train.py", "cnn"], repo, check=False)
        assert result.returncode == 1
        assert result.stderr == "error: params.yaml: models.cnn.recipe.batch_size: Input should be greater than 0\n"
        assert {p: (repo / p).read_bytes() for p in before} == before
        assert len(runs_by_name(repo)) == runs_before  # no MLflow run was started
        result = run(["dvc", "repro"], repo, check=False)
        assert result.returncode != 0
        assert "models.cnn.recipe.batch_size: Input should be greater than 0" in result.stderr
        assert "`git checkout -- metrics plots && dvc checkout`" in result.stderr  # what DVC removed, back
        run(["git", "checkout", "--", "params.yaml"], repo)
        (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "learning_rate: 0.01\n")
        result = run(["dvc", "repro"], repo, check=False)  # a key no stage reads: compare reads them all
        assert result.returncode != 0 and "error: params.yaml: learning_rate: unknown key" in result.stderr
        assert "Running stage 'train_" not in result.stdout
    finally:
        run(["git", "checkout", "--", "params.yaml"], repo)
        run(["dvc", "checkout", "-q"], repo, check=False)
        run(["git", "checkout", "--", "metrics", "plots"], repo)


# ---------------------------------------------------------------- MLflow

def test_mlflow_holds_a_comparable_run_per_model(repo):
    runs = runs_by_name(repo)
    assert {"ResNet18", "Small CNN", "ResNet18 vs Small CNN"} <= set(runs)
    mlflow_client = client(repo)
    parent = runs["ResNet18 vs Small CNN"]
    for model, title in (("resnet", "ResNet18"), ("cnn", "Small CNN")):
        run_info = runs[title]
        assert run_info.info.run_id == load(repo, f"metrics/train/{model}.json")["mlflow_run_id"]
        params = run_info.data.params
        assert params["model"] == model and float(params["lr"]) == 0.001 and params["subset"] == "600"
        assert params["batch_size"] == str(20 if model == "resnet" else 100) and "torch_version" in params
        stage = "train_baseline" if model == "cnn" else f"train@{model}"  # the DVC stage that ran it
        assert run_info.data.tags["dvc.stage"] == stage and "git.commit" in run_info.data.tags
        assert run_info.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = mlflow_client.get_metric_history(run_info.info.run_id, "train/loss_step")
        assert len(history) > 1 and [m.step for m in history] == list(range(1, len(history) + 1))
        metrics = run_info.data.metrics
        evaluation = load(repo, "metrics/evaluate.json")[model]
        assert metrics["test_accuracy"] == pytest.approx(evaluation["accuracy"])
        assert metrics["test_f1_Ankle_boot"] == pytest.approx(evaluation["per_class"]["Ankle boot"]["f1"])
        assert metrics["test_recall_T-shirt_top"] == pytest.approx(evaluation["per_class"]["T-shirt/top"]["recall"])
        artifacts = {a.path for a in mlflow_client.list_artifacts(run_info.info.run_id, "evaluation")}
        assert artifacts == {"evaluation/confusion_matrix.png", "evaluation/classification_report.txt",
                             "evaluation/classification_report.json"}
    assert parent.data.tags["resnet_run_id"] == runs["ResNet18"].info.run_id
    assert {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "comparison")} >= {
        "comparison/f1.png", "comparison/f1_difference_resnet.png", "comparison/compare.json", "comparison/SUMMARY.md"}
    verdict = results.load(results.Comparison, repo / "metrics/compare.json").contenders["resnet"].verdict
    metrics = {key.removeprefix("resnet."): value for key, value in parent.data.metrics.items()}
    assert metrics["mcnemar_p"] == pytest.approx(verdict.mcnemar.p_value)
    assert (metrics["mcnemar_b"], metrics["mcnemar_c"]) == (verdict.mcnemar.b, verdict.mcnemar.c)
    assert [metrics["accuracy_gain_lower"], metrics["accuracy_gain_upper"]] == pytest.approx(verdict.accuracy_gain_ci)
    assert [metrics["macro_f1_gain_lower"], metrics["macro_f1_gain_upper"]] == pytest.approx(
        verdict.macro_f1_gain_ci)
    assert metrics["p_null_gain_at_most_margin"] == pytest.approx(verdict.p_null_gain_at_most_margin)
    assert parent.data.tags["verdict.resnet"] == verdict.decision
    params = parent.data.params  # what shaped the comparison, and the children's params for sorting
    assert params["compare.bootstrap_samples"] == "2000" and params["compare.alpha"] == "0.05"
    assert params["lr"] == "0.001" and params["resnet.batch_size"] == "20" and params["cnn.batch_size"] == "100"


def test_logged_model_predicts_with_pyfunc(repo):
    code = ("import json, sys, numpy as np, mlflow\n"
            "mlflow.set_tracking_uri('sqlite:///mlflow.db')\n"
            "uri = json.load(open('metrics/train/cnn.json'))['mlflow_model_uri']\n"
            "print(mlflow.pyfunc.load_model(uri).predict(np.random.rand(7, 1, 28, 28).astype('float32')).shape)\n")
    assert run([sys.executable, "-c", code], repo).stdout.strip().endswith("(7, 10)")


def test_unreachable_tracking_server_fails_fast_and_keeps_outputs(repo):
    before = {p: (repo / p).read_bytes() for p in ("metrics/train/cnn.json", "models/cnn.pt")}
    for uri in (f"http://127.0.0.1:{free_port()}", "nosuchscheme://tracking"):
        started = time.perf_counter()
        result = run([sys.executable, "stages/train.py", "cnn"], repo, env=tool_env(MLFLOW_TRACKING_URI=uri),
                     check=False)
        assert result.returncode == 1 and time.perf_counter() - started < 60
        assert result.stderr.startswith(f"error: MLflow tracking at {uri} failed: ")
        assert result.stderr.count("\n") == 1
        assert {p: (repo / p).read_bytes() for p in before} == before


def test_tracking_can_be_disabled(repo):
    set_params(repo, tracking__enabled=False)
    try:
        env = tool_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")  # never contacted
        run([sys.executable, "stages/train.py", "cnn"], repo, env=env)
        assert load(repo, "metrics/train/cnn.json")["mlflow_run_id"] is None
    finally:
        run(["git", "checkout", "--", "params.yaml", "metrics", "plots"], repo)
        run(["dvc", "checkout", "-q", "-f"], repo, check=False)


# ---------------------------------------------------------------- dvc plots and experiments

def plot_points(data, plot_id):
    """The data points of one plot in `dvc plots show/diff --json` output."""
    assert plot_id in data, list(data)
    return [point for entry in data[plot_id] for point in entry["content"]["data"]["values"]]


def test_dvc_plots_show_lists_grouped_bars_with_both_models(repo):
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)
    data = plots.get("data", plots)
    for metric in ("precision", "recall", "f1"):
        points = plot_points(data, f"plots/compare/{metric}_per_class.csv")
        assert {point["model"] for point in points} == {"ResNet18", "Small CNN"}
        assert {point["class"] for point in points} == set(CLASS_NAMES) and len(points) == 20
        assert all(float(p["lower"]) <= float(p["value"]) + 1e-12 <= float(p["upper"]) + 2e-12 for p in points)
    assert len(plot_points(data, "plots/compare/f1_difference/resnet.csv")) == 10
    expected = {f"plots/train/{m}_{kind}.csv" for m in MODELS for kind in ("steps", "epochs")}
    expected |= {f"plots/evaluate/confusion_{m}.csv" for m in MODELS}
    expected |= {f"plots/compare/{name}.csv" for name in ("precision_per_class", "recall_per_class",
                                                          "f1_per_class", "f1_difference/resnet")}
    expected |= {f"plots/compare/figures/{name}.png" for name in ("precision", "recall", "f1", "f1_difference_resnet",
                                                                  "learning_curves")}
    expected |= {f"plots/{study}/{name}.{kind}" for study in ("study", "study_tuned_subset")
                 for name in ("accuracy_per_seed", "gain_per_seed", "noise_sources", "f1_difference")
                 for kind in ("csv", "png")}  # the committed seed studies (two recipes), top-level plots
    expected |= {"val_accuracy_per_trial", "plots/tuning_subset/expected_best.png",  # the committed searches
                 "plots/tuning/search.png",
                 "plots/recipes/accuracy_vs_cost.png"}  # and the recipes' figure, top-level too
    assert set(data) == expected  # each plot once, defined where its stage writes it
    confusion = data["plots/evaluate/confusion_cnn.csv"][0]["content"]["spec"]["encoding"]
    assert confusion["x"]["sort"] == list(CLASS_NAMES) == confusion["y"]["sort"]  # label order


def test_cnn_only_change_leaves_resnet_cached(repo):
    set_params(repo, models__cnn__recipe__batch_size=50)
    try:
        status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
        assert "train_baseline" in status and "train@resnet" not in status and "prepare" not in status
        dry = run(["dvc", "repro", "--dry"], repo).stdout
        assert "Running stage 'train_baseline'" in dry and "Running stage 'train@resnet'" not in dry
    finally:
        run(["git", "checkout", "--", "params.yaml"], repo)


def test_an_lr_experiment_is_tracked_shown_and_restored_from_the_run_cache(own_repo):
    """`dvc exp run --temp -S cnn.lr=0.01`, in a temporary workspace (as queued runs are); one model retrains
    (the top-level lr resolves into both models' configs: test_params.py). One experiment serves both checks."""
    repo = own_repo
    run(["dvc", "exp", "run", "--temp", "-S", "models.cnn.recipe.lr=0.01", "-n", "lr-high"], repo)
    check_experiment_logs_to_the_repo_root_store_and_shows(repo, "lr-high")
    check_params_that_ran_before_are_restored_from_the_run_cache(repo)


def check_experiment_logs_to_the_repo_root_store_and_shows(repo, experiment):
    runs = runs_by_name(repo, **{"dvc.exp_name": experiment, "dvc.stage": "train_baseline"})
    assert len(runs) == 1 and float(next(iter(runs.values())).data.params["lr"]) == 0.01
    runs = runs_by_name(repo, **{"dvc.exp_name": experiment})
    assert set(runs) == {"Small CNN", "ResNet18 vs Small CNN"}  # ResNet18 came from the cache, untrained
    assert all(run_info.data.metrics.get("test_accuracy") is not None
               for name, run_info in runs.items() if name != "ResNet18 vs Small CNN")
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert f'"{experiment}"' in text and "0.01" in text and "test_accuracy" in text

    diff = json.loads(run(["dvc", "plots", "diff", "HEAD", experiment, "--json"], repo).stdout)
    points = plot_points(diff.get("data", diff), "plots/compare/f1_per_class.csv")
    assert {(point["rev"], point["model"]) for point in points} == {
        (rev, model) for rev in ("HEAD", experiment) for model in ("ResNet18", "Small CNN")}


# ---------------------------------------------------------------- caching

def output_bytes(repo):
    """MD5 of each output (readable when a comparison fails)."""
    import hashlib

    paths = ["models/resnet.pt", "models/cnn.pt", "data/prepared/train.pt", "data/prepared/test.pt",
             "data/predictions/test.csv", "metrics/headline.json", "plots/compare/f1_per_class.csv"]
    return {path: hashlib.md5((repo / path).read_bytes()).hexdigest() for path in paths}


def check_params_that_ran_before_are_restored_from_the_run_cache(repo):
    """cnn.lr=0.01 ran as an experiment: set in the workspace, every stage it changes is restored, none
    runs; back to the committed value, the committed outputs come back the same way."""
    import torch

    reset_to_head(repo)
    first = output_bytes(repo)
    try:
        for expected_lr in (0.01, None):
            set_params(repo, models__cnn__recipe__lr=expected_lr)
            restored = run(["dvc", "repro"], repo).stdout
            assert "Running stage" not in restored
            for stage in ("train_baseline", "evaluate", "compare"):
                assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in restored
            assert torch.load(repo / "models/cnn.pt", weights_only=True)["config"]["lr"] == (expected_lr or 0.001)
            if expected_lr == 0.01:
                assert output_bytes(repo)["models/cnn.pt"] != first["models/cnn.pt"]
        assert output_bytes(repo) == first
        assert run(["git", "status", "--porcelain", "dvc.lock", "metrics", "plots"], repo).stdout == ""
    finally:
        reset_to_head(repo)


def test_rerunning_prepare_and_training_gives_the_same_bytes(repo):
    """Byte-stable outputs: the same data and the same params give the hashes dvc.lock already holds."""
    reset_to_head(repo)
    before = output_bytes(repo)
    result = run(["dvc", "repro", "--force", "--single-item", "prepare"], repo)
    assert "Running stage 'prepare'" in result.stdout
    run(["dvc", "repro", "--force", "--single-item", "train_baseline"], repo)
    after = output_bytes(repo)
    for path in ("data/prepared/train.pt", "data/prepared/test.pt", "models/cnn.pt"):
        assert after[path] == before[path], path
    lock = run(["git", "diff", "dvc.lock"], repo).stdout
    assert "data/prepared" not in lock and "models/cnn.pt" not in lock
    reset_to_head(repo)


@pytest.mark.long
def test_queued_experiment_runs_its_own_code(own_repo):
    """A queued experiment runs in a copy of the repository: it must import that copy's package, not the
    workspace's (which may have changed, or be another branch, by the time the queue runs)."""
    repo = own_repo
    comparison = repo / "src/fashion_compare/comparison.py"
    original = comparison.read_text()
    marked = original.replace('"mcnemar_p": verdict.mcnemar.p_value,',
                              '"mcnemar_p": verdict.mcnemar.p_value, "code_marker": 7,')
    assert marked != original
    comparison.write_text(marked)
    try:
        run(["dvc", "exp", "run", "--queue", "-n", "own-code"], repo)
    finally:
        comparison.write_text(original)  # the workspace is back to the old code before the queue runs
    run(["dvc", "exp", "run", "--run-all", "-j", "1"], repo)  # a queue worker runs it; this follows it to the end
    status = run(["dvc", "queue", "status"], repo).stdout
    assert "own-code" in status and "Success" in status, status
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert '"own-code"' in text and '"code_marker": 7' in text.replace('"code_marker":7', '"code_marker": 7')
    assert "code_marker" not in (repo / "metrics/headline.json").read_text()
