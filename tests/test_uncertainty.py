"""Paired statistics with known answers: McNemar's exact test and the paired bootstrap."""

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import classification_report

from fashion_compare import PER_CLASS_METRICS, uncertainty


def labels(per_class=100):
    return np.repeat(np.arange(10), per_class)


def noisy(y, accuracy, seed):
    rng = np.random.default_rng(seed)
    return np.where(rng.random(len(y)) < accuracy, y, (y + rng.integers(1, 10, len(y))) % 10)


def test_identical_predictions_give_p_one_and_zero_width_differences():
    y = labels()
    pred = noisy(y, 0.8, seed=1)
    assert uncertainty.mcnemar_exact(y, pred, pred) == {"b": 0, "c": 0, "p_value": 1.0}
    result = uncertainty.paired_bootstrap(y, pred, pred, samples=300)
    for key in ("accuracy", "macro_f1"):
        assert result["difference"][key] == {"value": 0.0, "lower": 0.0, "upper": 0.0}
    for metric in PER_CLASS_METRICS:
        assert result["difference"][metric]["lower"] == [0.0] * 10 == result["difference"][metric]["upper"]


def test_thirty_more_right_on_one_class_is_significant_there_only():
    y = labels(200)
    cnn = noisy(y, 0.75, seed=2)
    resnet = cnn.copy()
    wrong_coats = np.flatnonzero((y == 4) & (cnn != 4))[:30]
    resnet[wrong_coats] = 4  # ResNet18 gets 30 more Coats right, and is otherwise identical
    test = uncertainty.mcnemar_exact(y, resnet, cnn)
    assert (test["b"], test["c"]) == (30, 0)
    assert test["p_value"] == pytest.approx(binomtest(30, 30, 0.5).pvalue) == pytest.approx(2 * 0.5**30)
    result = uncertainty.paired_bootstrap(y, resnet, cnn, samples=1000, seed=3)
    f1 = result["difference"]["f1"]
    assert f1["lower"][4] > 0  # Coat: the interval excludes 0
    assert uncertainty.excludes_zero(f1, 4)
    assert result["difference"]["accuracy"]["value"] == pytest.approx(30 / 2000)
    assert result["difference"]["accuracy"]["lower"] > 0
    assert not uncertainty.excludes_zero(f1, 7)  # Sneaker predictions are identical: [0, 0]


def test_textbook_mcnemar_table():
    """Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91, Table 1 (airway
    hyper-responsiveness before/after): discordant pairs 1 and 7; exact conditional p = 0.070."""
    y = np.zeros(21, dtype=int)
    a = np.array([0] * 1 + [0] * 1 + [1] * 7 + [0] * 12)  # right, right, wrong, right
    b = np.array([0] * 1 + [1] * 1 + [0] * 7 + [0] * 12)
    test = uncertainty.mcnemar_exact(y, a, b)
    assert (test["b"], test["c"]) == (1, 7)
    assert round(test["p_value"], 3) == 0.070
    assert test["p_value"] == pytest.approx(2 * (1 + 8) / 2**8)


def test_point_estimates_match_scikit_learn():
    y = labels(50)
    resnet, cnn = noisy(y, 0.9, seed=4), noisy(y, 0.85, seed=5)
    result = uncertainty.paired_bootstrap(y, resnet, cnn, samples=200)
    report = classification_report(y, resnet, output_dict=True, zero_division=0)
    assert result["a"]["macro_f1"]["value"] == pytest.approx(report["macro avg"]["f1-score"])
    assert result["a"]["accuracy"]["value"] == pytest.approx(report["accuracy"])
    assert result["a"]["recall"]["value"][3] == pytest.approx(report["3"]["recall"])
    assert result["a"]["precision"]["value"][6] == pytest.approx(report["6"]["precision"])


def test_intervals_cover_the_estimate_shrink_with_more_images_and_repeat_for_a_seed():
    widths = []
    for per_class in (50, 200, 800):
        y = labels(per_class)
        resnet, cnn = noisy(y, 0.9, seed=6), noisy(y, 0.87, seed=7)
        result = uncertainty.paired_bootstrap(y, resnet, cnn, samples=500, seed=8)
        for side in ("a", "b", "difference"):
            for key in ("accuracy", "macro_f1"):
                summary = result[side][key]
                assert summary["lower"] <= summary["value"] <= summary["upper"]
            f1 = result[side]["f1"]
            assert all(lo <= v <= hi for lo, v, hi in zip(f1["lower"], f1["value"], f1["upper"]))
        widths.append(result["difference"]["accuracy"]["upper"] - result["difference"]["accuracy"]["lower"])
    assert widths[0] > widths[1] > widths[2] > 0
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.35)  # 16x the images: about a quarter the width
    y = labels(50)
    resnet, cnn = noisy(y, 0.9, seed=6), noisy(y, 0.87, seed=7)
    assert uncertainty.paired_bootstrap(y, resnet, cnn, 300, seed=1) == \
        uncertainty.paired_bootstrap(y, resnet, cnn, 300, seed=1)
    assert uncertainty.paired_bootstrap(y, resnet, cnn, 300, seed=1) != \
        uncertainty.paired_bootstrap(y, resnet, cnn, 300, seed=2)
