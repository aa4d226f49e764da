"""The seed study's aggregate: its numbers against values computed here by hand and by scipy, and what it
refuses. (The study runs end to end in test_team.py.)"""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from fashion_compare import study
from fashion_compare.params import CompareParams

N = 1000
LABELS = np.arange(N) % 10
PARAMS = {"seed": 0, "lr": 0.001, "epochs": 10, "threads": "auto", "cnn": {"batch_size": 100},
          "study": {"seeds": [1, 2, 3], "jobs": 1}}


def predictions_with_accuracy(accuracy: float, shift: int = 0) -> np.ndarray:
    """Right on the first round(accuracy * N) images (from `shift` on, cyclically), one class off elsewhere."""
    right = np.zeros(N, dtype=bool)
    right[(np.arange(round(accuracy * N)) + shift) % N] = True
    return np.where(right, LABELS, (LABELS + 1) % 10)


def seed_run(seed, resnet_accuracy, cnn_accuracy, **changes):
    params = {**PARAMS, "seed": seed, **changes}
    predictions = {"label": LABELS, "resnet": predictions_with_accuracy(resnet_accuracy, 7 * seed),
                   "cnn": predictions_with_accuracy(cnn_accuracy, 3 * seed)}
    return study.SeedRun(seed, params, predictions)


SETTINGS = CompareParams(min_accuracy_gain=0.01, alpha=0.05, bootstrap_samples=200, confidence=0.95)


def test_the_numbers_over_seeds_are_the_textbook_ones():
    resnet, cnn = [0.90, 0.92, 0.91], [0.89, 0.90, 0.905]
    runs = [seed_run(seed, r, c) for seed, r, c in zip((1, 2, 3), resnet, cnn)]
    result = study.aggregate(runs, SETTINGS)

    gains = np.array(resnet) - np.array(cnn)  # 0.010, 0.020, 0.005
    mean, sd = gains.mean(), np.sqrt(((gains - gains.mean()) ** 2).sum() / 2)
    half = 4.302652729911275 * sd / np.sqrt(3)  # t(0.975, 2 degrees of freedom), from a table
    assert result["accuracy_gain"]["mean"] == pytest.approx(0.011666666666666667)
    assert result["accuracy_gain"]["sd"] == pytest.approx(sd)
    assert result["accuracy_gain"]["ci"] == pytest.approx([mean - half, mean + half])
    t = mean / (sd / np.sqrt(3))
    assert result["paired_t_test"]["statistic"] == pytest.approx(t)
    assert result["paired_t_test"]["p_value"] == pytest.approx(2 * stats.t.sf(t, 2))
    assert result["paired_t_test"]["p_value"] == pytest.approx(stats.ttest_rel(resnet, cnn).pvalue)
    assert result["wilcoxon_p"] is None  # fewer than 6 seeds
    assert result["models"]["resnet"]["test_accuracy"] == pytest.approx(
        {"mean": 0.91, "sd": 0.01, "min": 0.90, "max": 0.92})
    assert result["p_resnet_better"]["value"] == 1.0 and result["p_resnet_better"]["ci"] == [1.0, 1.0]
    # 3 of 3 seeds won: Clopper-Pearson's 95 % interval is [(0.025)^(1/3), 1] = [0.292, 1]
    assert result["p_resnet_better"]["exact_ci"] == pytest.approx([0.025 ** (1 / 3), 1.0])

    deep_f1 = [f1_score(LABELS, run.predictions["resnet"], average=None) for run in runs]
    small_f1 = [f1_score(LABELS, run.predictions["cnn"], average=None) for run in runs]
    differences = np.array(deep_f1) - np.array(small_f1)
    for index, name in enumerate(study.CLASS_NAMES):
        assert result["per_class"][name]["f1_difference_mean"] == pytest.approx(differences[:, index].mean())
        lower, upper = result["per_class"][name]["f1_difference_ci"]
        assert lower <= differences[:, index].mean() <= upper

    # the rule: mean gain 1.17 points >= 1 point, and p = 0.095 is not < 0.05: not worth it
    assert result["verdict"]["conditions"] == {"mean_gain_at_least_min": True, "paired_t_test_significant": False}
    assert result["verdict"]["deep_model_worth_it"] is False
    assert [row["accuracy_gain"] for row in result["per_seed"]] == pytest.approx(list(gains))


def test_probability_of_superiority_counts_ties_as_half_and_wilcoxon_joins_from_six_seeds():
    resnet = [0.90, 0.91, 0.92, 0.90, 0.93, 0.91]
    cnn = [0.91, 0.91, 0.90, 0.88, 0.90, 0.89]  # one loss, one tie, four wins
    runs = [seed_run(seed, r, c) for seed, r, c in zip(range(1, 7), resnet, cnn)]
    result = study.aggregate(runs, SETTINGS)
    assert result["p_resnet_better"]["value"] == pytest.approx(4.5 / 6)
    lower, upper = result["p_resnet_better"]["ci"]
    assert 0 <= lower < 4.5 / 6 < upper <= 1
    gains = np.array(resnet) - np.array(cnn)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(gains).pvalue)


def test_a_consistent_large_gain_is_worth_it_and_single_runs_that_disagree_are_counted():
    runs = [seed_run(seed, r, c) for seed, r, c in zip((1, 2, 3), [0.952, 0.953, 0.949], [0.94, 0.94, 0.94])]
    result = study.aggregate(runs, SETTINGS)
    assert result["verdict"]["deep_model_worth_it"] is True
    singles = [row["single_run_verdict"] for row in result["per_seed"]]
    assert singles == [True, True, False]  # seed 3 alone: 0.9 points, under the 1 point asked for
    assert result["verdict"]["single_runs_saying_otherwise"] == 1


@pytest.mark.parametrize("runs, message", [
    ([seed_run(1, 0.9, 0.9)], "a study needs at least 2 finished seeds, got 1 (1)"),
    ([seed_run(1, 0.9, 0.9), seed_run(1, 0.91, 0.9)], "seed 1 appears more than once"),
    ([seed_run(1, 0.9, 0.9), seed_run(2, 0.9, 0.9, lr=0.01, cnn={"batch_size": 50})],
     "seeds 1 and 2 ran with different params (cnn.batch_size, lr)"),
])
def test_what_is_not_a_study_is_refused_in_one_line(runs, message):
    with pytest.raises(study.StudyError) as error:
        study.aggregate(runs, SETTINGS)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_seed_threads_and_what_does_not_shape_the_predictions_may_differ():
    runs = [seed_run(1, 0.9, 0.9), seed_run(2, 0.91, 0.9, threads=1, study={"seeds": [2], "jobs": 2},
                                            compare={"alpha": 0.01}, tracking={"enabled": False})]
    assert study.aggregate(runs, SETTINGS)["k"] == 2


def test_failed_seeds_are_named_not_dropped_silently():
    runs = [seed_run(1, 0.9, 0.9), seed_run(2, 0.91, 0.9)]
    result = study.aggregate(runs, SETTINGS, failed={3: "train_resnet: out of memory"})
    assert result["failed_seeds"] == {"3": "train_resnet: out of memory"}
    assert "seed 3: train_resnet: out of memory" in study.summary_markdown(result)
