from fashion_compare import records


def test_metric_keys_are_readable():
    assert records.metric_key("T-shirt/top") == "T-shirt_top"
    assert records.metric_key("Ankle boot") == "Ankle_boot"


def test_comparison_run_params_merge_what_the_models_share():
    children = {"resnet": {"lr": "0.001", "batch_size": "20", "model": "resnet", "epochs": "10"},
                "cnn": {"lr": "0.001", "batch_size": "100", "model": "cnn", "epochs": "10"}}
    settings = {"baseline": "cnn", "contenders": ["resnet"], "alpha": 0.05, "confidence": 0.95}
    merged = records.comparison_run_params(children, settings, seed=42)
    assert merged == {"lr": "0.001", "epochs": "10", "resnet.batch_size": "20", "cnn.batch_size": "100",
                      "resnet.model": "resnet", "cnn.model": "cnn", "compare.alpha": 0.05,
                      "compare.confidence": 0.95, "compare.baseline": "cnn", "compare.contenders": "resnet",
                      "seed": 42}
    only_one = records.comparison_run_params({"cnn": children["cnn"]}, settings, seed=1)
    assert only_one == {"compare.alpha": 0.05, "compare.confidence": 0.95, "compare.baseline": "cnn",
                        "compare.contenders": "resnet", "seed": 1}  # a model trained without tracking: no merge
