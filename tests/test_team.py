"""A team on one machine: two clones stand for two machines, sharing a DVC remote (a local folder, with
the run cache) and an MLflow tracking server on 127.0.0.1. Nobody retrains what was trained."""

import json
import subprocess
import sys
import urllib.request

import pytest
from conftest import (
    VENV_BIN,
    commit_all,
    copy_built,
    free_port,
    reset_to_head,
    run,
    set_params,
    tool_env,
    wait_until_up,
)

pytestmark = pytest.mark.e2e
MODELS = ("resnet", "cnn")


def stages_run(output):
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_second_clone_pulls_instead_of_retraining(tmp_path, built_pipeline, mlflow_server):
    """Machine A has run the pipeline and pushes its outputs and run cache; machine B pulls them and retrains
    nothing; B's own change runs only the stages it touches, and its runs arrive at the team's server."""
    from mlflow.tracking import MlflowClient

    env = tool_env(MLFLOW_TRACKING_URI=mlflow_server)
    remote = tmp_path / "dvc-remote"
    first = copy_built(built_pipeline, (tmp_path / "machine-a").resolve())
    reset_to_head(first)
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], first)
    commit_all(first, "shared DVC remote")
    run(["dvc", "push", "--run-cache"], first, env=env)

    second = tmp_path / "machine-b"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    run(["dvc", "pull", "--run-cache"], second, env=env)
    result = run(["dvc", "repro"], second, env=env)
    assert stages_run(result.stdout) == set(), result.stdout
    for path in ("models/resnet.pt", "models/cnn.pt", "data/prepared/train.pt", "data/predictions/test.csv"):
        assert (second / path).read_bytes() == (first / path).read_bytes(), path

    set_params(second, cnn__lr=0.002)
    assert stages_run(run(["dvc", "repro"], second, env=env).stdout) == {"train_cnn", "evaluate", "compare"}

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("fashion-mnist")
    found = client.search_runs([experiment.experiment_id])
    by_stage = {}
    for found_run in found:
        by_stage.setdefault(found_run.data.tags.get("dvc.stage"), []).append(found_run)
    assert sorted(by_stage) == ["compare", "train_cnn"] and all(len(runs) == 1 for runs in by_stage.values())
    cnn_run = by_stage["train_cnn"][0]
    assert float(cnn_run.data.params["lr"]) == 0.002 and cnn_run.data.params["subset"] == "600"
    assert cnn_run.info.run_id == json.loads((second / "metrics/train_cnn.json").read_text())["mlflow_run_id"]
    assert "test_f1_Ankle_boot" in cnn_run.data.metrics  # evaluate logged into the training run
    assert all(r.info.status == "FINISHED" for r in found)
    for found_run in found:
        assert found_run.info.artifact_uri.startswith("mlflow-artifacts:"), found_run.info.artifact_uri
    # a model trained on machine B, fetched through the server from machine A
    model_uri = json.loads((second / "metrics/train_cnn.json").read_text())["mlflow_model_uri"]
    code = ("import json, sys, numpy as np, mlflow\n"
            f"model = mlflow.pyfunc.load_model({model_uri!r})\n"
            "print(model.predict(np.zeros((2, 1, 28, 28), dtype='float32')).shape)\n")
    assert run([sys.executable, "-c", code], first, env=env).stdout.strip().endswith("(2, 10)")
    figures = {a.path for a in client.list_artifacts(by_stage["compare"][0].info.run_id, "comparison")}
    assert "comparison/f1_difference.png" in figures


def test_served_model_answers_like_the_evaluate_stage(repo):
    """`mlflow models serve` on loopback; three test images POSTed; the same classes as evaluate found."""
    import torch

    reset_to_head(repo)  # the model, its MLflow run and the predictions of one and the same smoke run
    model_uri = json.loads((repo / "metrics/train_cnn.json").read_text())["mlflow_model_uri"]
    port = free_port()
    env = tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}")
    server = subprocess.Popen([str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
                               "local", "--host", "127.0.0.1", "--port", str(port)], cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        images = torch.load(repo / "data/prepared/test.pt", weights_only=True)["images"][:3]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": images.numpy().tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    logits = answer["predictions"]
    served = [max(range(10), key=row.__getitem__) for row in logits]
    lines = (repo / "data/predictions/test.csv").read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("cnn_predicted")
    assert served == [int(line.split(",")[column]) for line in lines[1:4]]
