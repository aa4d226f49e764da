import numpy as np
import pytest

from fashion_compare import CLASS_NAMES, comparison, evaluation, reports

TITLES = {"resnet": "ResNet18", "cnn": "Small CNN", "wide": "Wide model"}


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


def constructed_comparison(extra_coats_right=60, **settings):
    """1000 test images per class; the CNN is right on 85 % of each class and takes every Coat it
    misses for a Shirt. ResNet18 makes the same predictions except on Coat, where it gets
    `extra_coats_right` more right, and Ankle boot, where it calls 40 the CNN gets right Sneakers:
    predictions of T-shirt/top, Trouser, Pullover, Dress, Sandal and Bag are identical."""
    from fashion_compare.params import CompareParams

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 1000)
    cnn = np.where(rng.random(len(y)) < 0.85, y, (y + rng.integers(1, 10, len(y))) % 10)
    cnn[(y == 4) & (cnn != 4)] = 6
    resnet = cnn.copy()
    resnet[np.flatnonzero((y == 4) & (cnn != 4))[:extra_coats_right]] = 4
    resnet[np.flatnonzero((y == 9) & (cnn == 9))[:40]] = 7
    evaluation_ = {}
    for name, pred, latency in (("resnet", resnet, 4.0), ("cnn", cnn, 1.0)):
        evaluation_[name] = {**evaluation.classification_metrics(y, pred), "latency_ms_per_image": latency,
                             "throughput_images_per_s": 100.0}
    train = {"resnet": {"parameter_count": 11_000_000, "epochs": 2, "train_seconds": 1200.0},
             "cnn": {"parameter_count": 1_000_000, "epochs": 10, "train_seconds": 300.0}}
    curves = {"resnet": [0.80, 0.86], "cnn": [0.84, 0.85, 0.87]}
    predictions = {"label": y, "resnet": resnet, "cnn": cnn}
    contenders = settings.pop("contenders", ["resnet"])
    if "wide" in contenders:  # a third model: ResNet18's predictions with 150 more Coats and Shirts right
        wide = resnet.copy()
        wide[np.flatnonzero((y == 4) & (wide != 4))[:75]] = 4  # those of the 150 Coats ResNet18 still misses
        wide[np.flatnonzero((y == 6) & (wide != 6))[:75]] = 6
        predictions["wide"] = wide
        evaluation_["wide"] = {**evaluation.classification_metrics(y, wide), "latency_ms_per_image": 8.0,
                               "throughput_images_per_s": 50.0}
        train["wide"] = {"parameter_count": 22_000_000, "epochs": 2, "train_seconds": 2400.0}
        curves["wide"] = [0.81, 0.88]
    params = CompareParams(**{"baseline": "cnn", "contenders": contenders, "min_accuracy_gain": 0.001,
                              "bootstrap_samples": 500, **settings})
    return comparison.compare(train, evaluation_, curves, predictions, params, seed=1)


def test_comparison_counts_only_significant_wins_and_tests_the_gain_against_the_margin():
    result = constructed_comparison()
    assert result.baseline == "cnn" and list(result.models) == ["resnet", "cnn"]
    assert list(result.contenders) == ["resnet"]
    per_class = result.contenders["resnet"].per_class
    assert per_class["Coat"].winner == "resnet" and per_class["Coat"].f1.difference_ci[0] > 0
    assert per_class["Ankle boot"].winner == "cnn" and per_class["Ankle boot"].f1.difference_ci[1] < 0
    for name in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Sandal", "Bag"):
        assert per_class[name].winner == comparison.NO_WINNER
        assert per_class[name].f1.difference_ci == (0.0, 0.0)
    verdict = result.contenders["resnet"].verdict
    won = verdict.classes_won
    assert won["resnet"] >= 1 and won["cnn"] >= 1 and won[comparison.NO_WINNER] >= 6 and sum(won.values()) == 10
    assert verdict.accuracy_gain == pytest.approx(20 / 10000)
    assert (verdict.mcnemar.b, verdict.mcnemar.c) == (60, 40)
    # The gain's standard error over the test images, by hand: 100 discordant images of 10,000, +-1 each.
    se = np.sqrt((100 / 10000 - 0.002 ** 2) * 10000 / 9999 / 10000)
    assert verdict.accuracy_gain_se == pytest.approx(se)
    assert verdict.accuracy_gain_ci == pytest.approx([0.002 - 1.96 * se, 0.002 + 1.96 * se], abs=1e-6)
    # 0.2 points, one-sided 95 % bounds [0.04, 0.36] points, against a margin of 0.1 point: undecided
    assert (verdict.lower, verdict.upper) == pytest.approx((0.002 - 1.645 * se, 0.002 + 1.645 * se), abs=1e-6)
    assert verdict.decision == "undecided" and verdict.deciding_bound is None and verdict.family == 1
    assert (verdict.train_time_ratio, verdict.parameter_ratio, verdict.latency_ratio) == (4.0, 11.0, 4.0)
    assert verdict.common_epoch == 2 and verdict.val_accuracy_at_common_epoch == {"resnet": 0.86, "cnn": 0.85}
    summary = reports.comparison_summary(result, TITLES)
    assert "**undecided**" in summary and "straddle the margin" in summary and "test-set sampling only" in summary
    assert "| Trouser |" in summary and "no significant difference" in summary
    assert "At equal training (epoch 2) validation accuracy is 0.8600 for ResNet18 and 0.8500 for Small CNN" in summary

    clear = constructed_comparison(extra_coats_right=120)  # +0.8 points, lower bound ~ +0.59 > 0.1
    assert clear.contenders["resnet"].verdict.decision == "worth it"
    assert clear.contenders["resnet"].verdict.deciding_bound == "lower"
    assert "**worth it**" in reports.comparison_summary(clear, TITLES)
    strict = constructed_comparison(extra_coats_right=120, min_accuracy_gain=0.02)  # upper bound ~ +1.0 < 2
    assert strict.contenders["resnet"].verdict.decision == "not worth it"
    assert strict.contenders["resnet"].verdict.deciding_bound == "upper"


def test_several_contenders_each_against_the_baseline_decided_with_holm_across_them():
    """A second contender ("wide"): each is compared with the baseline on the same resamples, and the
    decisions are Holm's across the two (statsmodels), not each at the unadjusted level."""
    from dataclasses import asdict

    from statsmodels.stats.multitest import multipletests

    result = constructed_comparison(extra_coats_right=120, contenders=["resnet", "wide"])
    assert list(result.models) == ["resnet", "wide", "cnn"] and list(result.contenders) == ["resnet", "wide"]
    alone = constructed_comparison(extra_coats_right=120)
    # the ResNet18 pair's figures are those of the pair alone; only the decision's family differs
    mine, its = asdict(result.contenders["resnet"]), asdict(alone.contenders["resnet"])
    assert mine["verdict"].pop("family") == 2 and its["verdict"].pop("family") == 1
    assert mine == its and result.models["resnet"] == alone.models["resnet"]
    verdicts = {name: c.verdict for name, c in result.contenders.items()}
    worth = multipletests([v.p_null_gain_at_most_margin for v in verdicts.values()], alpha=0.05, method="holm")[0]
    assert [v.decision == "worth it" for v in verdicts.values()] == list(worth)
    assert verdicts["wide"].accuracy_gain > verdicts["resnet"].accuracy_gain + 0.005
    assert result.contenders["wide"].per_class["Shirt"].winner == "wide"
    summary = reports.comparison_summary(result, TITLES)
    assert "### Wide model against Small CNN" in summary and "Holm's" in summary
    headline = comparison.headline(result)
    assert set(headline["contenders"]) == {"resnet", "wide"} and set(headline["models"]) == {"resnet", "wide", "cnn"}


def test_headline_holds_quality_and_the_test_and_cost_holds_timings():
    result = constructed_comparison()
    headline = comparison.headline(result)
    assert set(headline) == {"baseline", "models", "contenders"} and headline["baseline"] == "cnn"
    assert set(headline["contenders"]["resnet"]) == {"accuracy_gain", "accuracy_gain_lower", "accuracy_gain_upper",
                                                     "mcnemar_p", "p_gain_at_least_margin", "decision"}
    assert set(headline["models"]["resnet"]) == {"test_accuracy", "macro_f1"}
    assert headline["contenders"]["resnet"]["mcnemar_p"] == result.contenders["resnet"].verdict.mcnemar.p_value
    cost = comparison.cost(result)  # machine-dependent figures: apart from the headline
    assert cost["models"]["resnet"]["train_seconds"] == 1200.0
    assert cost["models"]["resnet"]["latency_ms_per_image"] == 4.0
    assert cost["contenders"]["resnet"]["train_time_ratio"] == 4.0
    rows = reports.per_class_rows(result, "f1", TITLES)
    assert len(rows) == 20 and {r["model"] for r in rows} == {"ResNet18", "Small CNN"}
    assert all(r["lower"] <= r["value"] <= r["upper"] for r in rows)
    forest = reports.f1_difference_rows(result.contenders["resnet"], TITLES)
    assert [r["class"] for r in forest] == list(CLASS_NAMES) and forest[4]["winner"] == "ResNet18"
