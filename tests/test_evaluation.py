import numpy as np
import pytest

from fashion_compare import CLASS_NAMES, comparison, evaluation


def test_metrics_on_known_predictions():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9])
    y_pred = np.array([0, 0, 1, 2, 1, 1, 2, 0, 3, 4, 5, 6, 7, 8, 9])
    result = evaluation.classification_metrics(y_true, y_pred)
    assert result["accuracy"] == pytest.approx(12 / 15)
    tshirt = result["per_class"]["T-shirt/top"]
    assert tshirt["precision"] == pytest.approx(2 / 3)  # predicted 0 three times, right twice
    assert tshirt["recall"] == pytest.approx(2 / 4)
    assert tshirt["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert tshirt["support"] == 4
    assert result["per_class"]["Trouser"]["precision"] == pytest.approx(2 / 3)
    assert result["per_class"]["Ankle boot"]["f1"] == 1.0
    assert list(result["per_class"]) == list(CLASS_NAMES)
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 15 and matrix[0].tolist()[:3] == [2, 1, 1]
    f1s = [s["f1"] for s in result["per_class"].values()]
    assert result["macro_avg"]["f1"] == pytest.approx(np.mean(f1s))


def test_per_class_rows_have_a_row_per_model_and_class():
    scores = {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "support": 4}
    results = {m: {"per_class": {n: scores for n in CLASS_NAMES}} for m in ("resnet", "cnn")}
    rows = evaluation.per_class_rows(results, "recall")
    assert len(rows) == 2 * 10
    assert rows[0] == {"model": "resnet", "class": "T-shirt/top", "metric": "recall", "value": 0.25}
    assert rows[-1] == {"model": "cnn", "class": "Ankle boot", "metric": "recall", "value": 0.25}


def fake_metrics(f1_resnet, f1_cnn, accuracy_resnet, accuracy_cnn):
    def result(f1, accuracy):
        per_class = {n: {"precision": f, "recall": f, "f1": f, "support": 1000} for n, f in zip(CLASS_NAMES, f1)}
        average = {"f1": float(np.mean(f1))}
        return {"accuracy": accuracy, "macro_avg": average, "weighted_avg": average, "per_class": per_class,
                "latency_ms_per_image": 4.0 if f1 is f1_resnet else 1.0, "throughput_images_per_s": 100.0}

    train = {"resnet": {"parameter_count": 11_000_000, "epochs": 2, "train_seconds": 1200.0},
             "cnn": {"parameter_count": 1_000_000, "epochs": 10, "train_seconds": 300.0}}
    return train, {"resnet": result(f1_resnet, accuracy_resnet), "cnn": result(f1_cnn, accuracy_cnn)}


def test_comparison_names_winners_margins_and_verdict():
    f1_resnet = [0.9] * 5 + [0.8] * 5
    f1_cnn = [0.85] * 5 + [0.8] * 4 + [0.9]
    train, metrics = fake_metrics(f1_resnet, f1_cnn, 0.91, 0.90)
    curves = {"resnet": [0.80, 0.86], "cnn": [0.84, 0.85, 0.87]}
    result = comparison.compare(train, metrics, min_accuracy_gain=0.005, val_accuracy=curves)
    assert result["per_class"]["T-shirt/top"]["winner"] == "resnet"
    assert result["per_class"]["T-shirt/top"]["f1_margin"] == pytest.approx(0.05)
    assert result["per_class"]["Ankle boot"]["winner"] == "cnn"
    assert result["per_class"]["Sandal"]["winner"] == "tie"
    verdict = result["verdict"]
    assert verdict["classes_won"] == {"resnet": 5, "cnn": 1}
    assert verdict["accuracy_gain"] == pytest.approx(0.01)
    assert (verdict["train_time_ratio"], verdict["parameter_ratio"], verdict["latency_ratio"]) == (4.0, 11.0, 4.0)
    assert verdict["deep_model_worth_it"] is True
    assert verdict["common_epoch"] == 2 and verdict["val_accuracy_at_common_epoch"] == {"resnet": 0.86, "cnn": 0.85}
    stricter = comparison.compare(train, metrics, min_accuracy_gain=0.02, val_accuracy=curves)
    assert stricter["verdict"]["deep_model_worth_it"] is False
    headline = comparison.headline(result)
    assert headline["resnet"] == {"test_accuracy": 0.91, "macro_f1": pytest.approx(0.85)}
    assert headline["deep_model_worth_it"] is True and headline["accuracy_gain"] == pytest.approx(0.01)
    cost = comparison.cost(result)  # machine-dependent figures: apart from the headline
    assert cost["resnet"]["train_seconds"] == 1200.0 and cost["resnet"]["latency_ms_per_image"] == 4.0
    assert cost["train_time_ratio"] == 4.0
    summary = comparison.summary_markdown(result)
    assert "**yes**" in summary and "+1.00 percentage points" in summary and "| Ankle boot |" in summary
    assert "At equal training (epoch 2) validation accuracy is 0.8600 for ResNet18 and 0.8500 for Small CNN" in summary
