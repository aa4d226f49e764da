from fashion_compare import tracking


def test_default_store_is_anchored_at_the_dvc_root(tmp_path, monkeypatch):
    """Inside `dvc exp run --temp/--queue` the cwd is a temporary checkout; DVC_ROOT names the real repo."""
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "run1"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"


def test_tracker_creates_experiment_with_artifacts_at_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    tracker = tracking.Tracker("unit-test")
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert (tmp_path / "mlflow.db").is_file()
    assert tracking.Tracker("unit-test").experiment_id == tracker.experiment_id  # found, not created twice
    run_id = tracker.start_run("unit", {"lr": 0.1}, {"dvc.stage": "unit"})
    tracker.log_metric_series(run_id, [("train/loss_step", 1.0 / (i + 1), i) for i in range(2500)])
    assert len(tracker.client.get_metric_history(run_id, "train/loss_step")) == 2500
    assert tracker.has_run(run_id) and not tracker.has_run("0" * 32)


def test_metric_keys_are_readable():
    assert tracking.metric_key("T-shirt/top") == "T-shirt_top"
    assert tracking.metric_key("Ankle boot") == "Ankle_boot"
