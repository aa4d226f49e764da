"""Paired statistics with known answers: McNemar's exact test and the paired bootstrap."""

import numpy as np
import pytest
from scipy import stats
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
    assert uncertainty.mcnemar_exact(y, pred, pred) == uncertainty.McNemar(b=0, c=0, p_value=1.0)
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
    assert (test.b, test.c) == (30, 0)
    assert test.p_value == pytest.approx(binomtest(30, 30, 0.5).pvalue) == pytest.approx(2 * 0.5**30)
    result = uncertainty.paired_bootstrap(y, resnet, cnn, samples=1000, seed=3)
    f1 = result["difference"]["f1"]
    assert f1["lower"][4] > 0  # Coat: the interval excludes 0
    assert uncertainty.winner(f1["lower"][4], f1["upper"][4], "resnet", "cnn") == "resnet"
    assert result["difference"]["accuracy"]["value"] == pytest.approx(30 / 2000)
    assert result["difference"]["accuracy"]["lower"] > 0
    # identical predictions: [0, 0]
    assert uncertainty.winner(f1["lower"][7], f1["upper"][7], "resnet", "cnn") == uncertainty.NO_WINNER


def test_textbook_mcnemar_table():
    """Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91, Table 1 (airway
    hyper-responsiveness before/after): discordant pairs 1 and 7; exact conditional p = 0.070."""
    y = np.zeros(21, dtype=int)
    a = np.array([0] * 1 + [0] * 1 + [1] * 7 + [0] * 12)  # right, right, wrong, right
    b = np.array([0] * 1 + [1] * 1 + [0] * 7 + [0] * 12)
    test = uncertainty.mcnemar_exact(y, a, b)
    assert (test.b, test.c) == (1, 7)
    assert round(test.p_value, 3) == 0.070
    assert test.p_value == pytest.approx(2 * (1 + 8) / 2**8)


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


# ---------------------------------------------------------------- both sources: seeds x test images

def test_two_way_mean_squares_are_statsmodels_anova_and_the_variance_counts_the_interaction_once():
    """Against statsmodels' two-way ANOVA (seed and image as factors, no replication) on a small table."""
    import pandas as pd
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    rng = np.random.default_rng(5)
    k, n = 4, 30
    values = 0.3 + rng.normal(0, 0.2, (k, 1)) + rng.normal(0, 0.5, (1, n)) + rng.normal(0, 0.3, (k, n))
    table = pd.DataFrame({"y": values.ravel(), "seed": np.repeat(np.arange(k), n), "image": np.tile(np.arange(n), k)})
    anova = sm.stats.anova_lm(ols("y ~ C(seed) + C(image)", table).fit())
    ms_seed, ms_image, ms_error = (anova.loc[row, "sum_sq"] / anova.loc[row, "df"]
                                   for row in ("C(seed)", "C(image)", "Residual"))
    estimate = uncertainty.two_way(values)
    assert estimate.mean == pytest.approx(values.mean())
    assert (estimate.se_seeds, estimate.se_images, estimate.se_interaction) == pytest.approx(
        tuple(np.sqrt(ms / (k * n)) for ms in (ms_seed, ms_image, ms_error)))
    assert estimate.se == pytest.approx(np.sqrt((ms_seed + ms_image - ms_error) / (k * n)))
    satterthwaite = (ms_seed + ms_image - ms_error) ** 2 / (
        ms_seed ** 2 / (k - 1) + ms_image ** 2 / (n - 1) + ms_error ** 2 / ((k - 1) * (n - 1)))
    assert estimate.df == pytest.approx(satterthwaite)
    single = uncertainty.two_way(values[0])  # one seed: the test images only, the usual standard error
    assert single.se == pytest.approx(values[0].std(ddof=1) / np.sqrt(n)) and single.df == n - 1


def simulated_studies(kind, k, studies, n, rng):
    """`studies` simulated studies of k seeds x n test images, and the true mean gain they estimate.
    gaussian: gain = 0.006 + seed + image + interaction effects. binary: per image and seed, each model is
    right (1) or wrong (0) with a probability set by the image's kind (drawn from a population of kinds)
    and shifted per seed and model; the true gain is the population's mean difference of probabilities."""
    if kind == "gaussian":
        values = (0.006 + rng.normal(0, 0.004, (studies, k, 1)) + rng.normal(0, 0.3, (studies, 1, n))
                  + rng.normal(0, 0.2, (studies, k, n)))
        return values, 0.006
    kinds = np.array([[0.98, 0.98], [0.75, 0.68], [0.5, 0.55], [0.9, 0.85]])  # P(right) for ResNet18, CNN
    weights = np.array([0.6, 0.2, 0.1, 0.1])
    probability = kinds[rng.choice(len(weights), size=(studies, 1, n), p=weights)]
    probability = probability + rng.uniform(-0.02, 0.02, (studies, k, 1, 2))  # a seed's shift, per model
    right = rng.random((studies, k, n, 2)) < probability
    return right[..., 0].astype(np.float64) - right[..., 1], float(weights @ (kinds[:, 0] - kinds[:, 1]))


@pytest.mark.parametrize("kind", ["gaussian", "binary"])
@pytest.mark.parametrize("k", [3, 5, 10])
def test_the_interval_of_the_gain_covers_the_true_gain_95_percent_of_the_time(kind, k):
    """2,000 simulated studies with known seed, image and interaction effects: the 95 % interval covers the
    true gain 93-97 % of the time (the seeds-only t-interval covered 81 % at k = 10 in the setting issue
    25 measured; adding the marginal variances over-covers)."""
    rng = np.random.default_rng(1000 * k + len(kind))
    values, truth = simulated_studies(kind, k, 2000, 500, rng)
    covered = [lower <= truth <= upper for lower, upper in (uncertainty.two_way(v).interval(0.95) for v in values)]
    assert 0.93 <= np.mean(covered) <= 0.97


def test_pseudo_values_average_to_accuracy_and_per_class_f1():
    from sklearn.metrics import f1_score

    y = labels(50)
    pred = noisy(y, 0.7, seed=4)
    values = uncertainty.pseudo_values(y, pred)
    assert values["accuracy"].mean() == pytest.approx(np.mean(y == pred))
    assert values["f1"].mean(axis=1) == pytest.approx(f1_score(y, pred, average=None))
    # the linearised F1's spread over the images is the F1's spread under resampling of the test set
    boot = uncertainty.paired_bootstrap(y, pred, pred, samples=4000, seed=2)["a"]["f1"]
    delta_se = values["f1"].std(axis=1, ddof=1) / np.sqrt(len(y))
    boot_se = (np.array(boot["upper"]) - np.array(boot["lower"])) / (2 * 1.96)
    assert delta_se == pytest.approx(boot_se, rel=0.2)


@pytest.mark.parametrize("mean, se, margin, decision", [
    (0.030, 0.005, 0.01, "worth it"),  # lower bound 0.030 - 1.645 * 0.005 = 0.022 >= 0.01
    (0.004, 0.002, 0.01, "not worth it"),  # upper bound 0.0073 < 0.01
    (0.009, 0.002, 0.01, "undecided"),  # bounds [0.0057, 0.0123] straddle 0.01
    (0.012, 0.002, 0.01, "undecided"),  # above the margin, but the lower bound 0.0087 is not
])
def test_the_three_verdicts_against_the_margin(mean, se, margin, decision):
    estimate = uncertainty.Estimate(mean, se, 1e6, 10, 10000, se, se, 0.0)  # df ~ infinite: normal bounds
    verdict = uncertainty.decide(estimate, margin, 0.05)
    assert verdict.decision == decision
    assert (verdict.lower, verdict.upper) == pytest.approx((mean - 1.6449 * se, mean + 1.6449 * se), abs=1e-6)
    assert verdict.p_gain_at_least_margin == pytest.approx(stats.norm.cdf((mean - margin) / se), abs=1e-5)
    assert (verdict.p_null_gain_at_most_margin < 0.05) == (decision == "worth it")  # H0 "gain <= margin"
    assert (verdict.p_gain_at_least_margin < 0.05) == (decision == "not worth it")  # = p of H0 "gain >= margin"
