"""The seed study's aggregate: its numbers against values computed here by hand and by scipy, the verdict and
the planner on constructed studies, and what it refuses. (The study runs end to end in test_team.py; its
runner against a fake dvc in test_study_runs.py.)"""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from fashion_compare import reports, study
from fashion_compare.params import CompareParams
from fashion_compare.results import CostRatio, CpuKind, CpuKindGain, RunRecord

N = 1000
TITLES = {"resnet": "ResNet18", "cnn": "Small CNN"}
LABELS = np.arange(N) % 10
PARAMS = {"seed": 0, "lr": 0.001, "epochs": 10, "threads": "auto", "cnn": {"batch_size": 100},
          "study": {"seeds": [1, 2, 3], "jobs": 1}}


def predictions_with_accuracy(accuracy: float, shift: int = 0) -> np.ndarray:
    """Right on the first round(accuracy * N) images (from `shift` on, cyclically), one class off elsewhere."""
    right = np.zeros(N, dtype=bool)
    right[(np.arange(round(accuracy * N)) + shift) % N] = True
    return np.where(right, LABELS, (LABELS + 1) % 10)


def seed_run(seed, resnet_accuracy, cnn_accuracy, record=None, **changes):
    params = {**PARAMS, "seed": seed, **changes}
    predictions = {"label": LABELS, "resnet": predictions_with_accuracy(resnet_accuracy, 7 * seed),
                   "cnn": predictions_with_accuracy(cnn_accuracy, 3 * seed)}
    return study.SeedRun(seed, params, predictions, record)


@pytest.fixture(autouse=True)
def quick_aso(monkeypatch):
    """deepsig's ASO at 100 samples instead of 1,000 (seconds per aggregate): it is reported, not tested here."""
    monkeypatch.setattr(study, "ASO_SAMPLES", 100)


SETTINGS = CompareParams(baseline="cnn", contenders=["resnet"], min_accuracy_gain=0.01, alpha=0.05,
                         bootstrap_samples=200, confidence=0.95)


def test_the_numbers_over_seeds_are_the_textbook_ones():
    resnet, cnn = [0.90, 0.92, 0.91], [0.89, 0.90, 0.905]
    runs = [seed_run(seed, r, c) for seed, r, c in zip((1, 2, 3), resnet, cnn)]
    result = study.aggregate(runs, SETTINGS)

    gains = np.array(resnet) - np.array(cnn)  # 0.010, 0.020, 0.005
    sd = np.sqrt(((gains - gains.mean()) ** 2).sum() / 2)
    half = 4.302652729911275 * sd / np.sqrt(3)  # t(0.975, 2 degrees of freedom), from a table
    assert result.contenders["resnet"].accuracy_gain.mean == pytest.approx(0.011666666666666667)
    assert result.contenders["resnet"].accuracy_gain.sd_over_seeds == pytest.approx(sd)
    assert result.contenders["resnet"].accuracy_gain.seeds_only_ci == \
        pytest.approx([gains.mean() - half, gains.mean() + half])
    # MS_seed over the 3 x 1000 table of correctness differences is n times the variance of the seeds' gains
    assert result.contenders["resnet"].accuracy_gain.se_seeds == pytest.approx(sd / np.sqrt(3))
    lower, upper = result.contenders["resnet"].accuracy_gain.ci
    assert lower < gains.mean() < upper
    assert result.models["resnet"].test_accuracy.mean == pytest.approx(0.91)
    assert result.models["resnet"].test_accuracy.sd == pytest.approx(0.01)
    # 3 of 3 seeds won: Clopper-Pearson's 95 % interval is [(0.025)^(1/3), 1] = [0.292, 1]
    assert result.contenders["resnet"].p_better.value == 1.0
    assert result.contenders["resnet"].p_better.exact_ci == pytest.approx([0.025 ** (1 / 3), 1.0])
    assert 0 <= result.contenders["resnet"].aso_epsilon_min <= 0.5

    deep_f1 = [f1_score(LABELS, run.predictions["resnet"], average=None) for run in runs]
    small_f1 = [f1_score(LABELS, run.predictions["cnn"], average=None) for run in runs]
    differences = np.array(deep_f1) - np.array(small_f1)
    for index, name in enumerate(study.CLASS_NAMES):
        entry = result.contenders["resnet"].per_class[name]
        assert entry.f1_difference_mean == pytest.approx(differences[:, index].mean())
        lower, upper = entry.f1_difference_ci
        adjusted_lower, adjusted_upper = entry.f1_difference_adjusted_ci
        assert adjusted_lower <= lower <= differences[:, index].mean() <= upper <= adjusted_upper
    assert [row.contenders["resnet"].accuracy_gain for row in result.per_seed] == pytest.approx(list(gains))


def test_holm_adjusts_the_per_class_p_values_and_a_class_is_won_only_after_it():
    """A large, consistent F1 difference on one class (wins there), small ones elsewhere: Holm's step-down
    adjustment computed here by hand."""
    runs = [seed_run(seed, r, c) for seed, r, c in zip((1, 2, 3, 4), [0.93, 0.935, 0.93, 0.94], [0.9, 0.9, 0.905, 0.9])]
    result = study.aggregate(runs, SETTINGS)
    raw = np.array([entry.p_value for entry in result.contenders["resnet"].per_class.values()])
    order = np.argsort(raw)
    holm = np.minimum(1, np.maximum.accumulate((len(raw) - np.arange(len(raw))) * raw[order]))
    by_hand = np.empty_like(holm)
    by_hand[order] = holm
    assert [entry.holm_p_value for entry in result.contenders["resnet"].per_class.values()] == pytest.approx(by_hand)
    from statsmodels.stats.multitest import multipletests

    assert by_hand == pytest.approx(multipletests(raw, method="holm")[1])
    for entry in result.contenders["resnet"].per_class.values():
        assert (entry.winner != study.NO_WINNER) == (entry.holm_p_value < 0.05)
        if entry.p_value < 0.05 <= entry.holm_p_value:
            assert entry.winner == study.NO_WINNER  # significant alone, not after adjustment


def test_probability_of_superiority_leaves_ties_out_of_value_and_interval_alike():
    resnet = [0.90, 0.91, 0.92, 0.90, 0.93, 0.91]
    cnn = [0.91, 0.91, 0.90, 0.88, 0.90, 0.89]  # one loss, one tie, four wins
    runs = [seed_run(seed, r, c) for seed, r, c in zip(range(1, 7), resnet, cnn)]
    superiority = study.aggregate(runs, SETTINGS).contenders["resnet"].p_better
    assert superiority.value == pytest.approx(4 / 5) and superiority.seeds_tied == 1
    assert superiority.exact_ci == pytest.approx(list(stats.binomtest(4, 5).proportion_ci(0.95, "exact")))


@pytest.mark.parametrize("resnet, cnn, decision", [
    ([0.952, 0.953, 0.951, 0.952], [0.90, 0.90, 0.90, 0.90], "worth it"),  # +5.2 points, far above the margin
    ([0.902, 0.903, 0.901, 0.902], [0.90, 0.90, 0.90, 0.90], "not worth it"),  # +0.2 points, far below
    ([0.91, 0.912, 0.908, 0.91], [0.90, 0.90, 0.90, 0.90], "undecided"),  # +1.0 point: on the margin
])
def test_the_study_verdict_against_the_margin(resnet, cnn, decision):
    runs = [seed_run(seed, r, c) for seed, r, c in zip((1, 2, 3, 4), resnet, cnn)]
    result = study.aggregate(runs, SETTINGS)
    verdict = result.contenders["resnet"].verdict
    assert verdict.decision == decision
    assert (verdict.plan is not None) == (decision == "undecided")
    summary = reports.study_summary(result, TITLES)
    assert f"**{decision}**" in summary
    if decision == "undecided":
        assert verdict.plan.planned_k is None or verdict.plan.planned_k > 4
        assert study.next_step(result, [1, 2, 3, 4]) is not None
    else:
        assert study.next_step(result, [1, 2, 3, 4]) is None


def test_a_tuned_studys_plan_stops_at_ten_seeds():
    """The reference recipe's plan may go to study.MAX_PLANNED_SEEDS (20), a tuned one's to 10 (a tuned seed costs
    more): a study that needs 17 seeds is one more stage for the first, out of reach for the second."""
    from fashion_compare.seed_folders import Recipe

    runs = [seed_run(seed, r, c) for seed, r, c in zip((1, 2, 3, 4), [0.91, 0.912, 0.908, 0.91], [0.90] * 4)]
    for recipe, cap in (("reference", study.MAX_PLANNED_SEEDS), ("tuned", 10)):
        result = study.aggregate(runs, SETTINGS, max_seeds=Recipe(recipe).max_planned_seeds)
        verdict = result.contenders["resnet"].verdict
        assert verdict.decision == "undecided" and verdict.plan.cap == cap
    ms = np.sqrt  # as in the planner's test: variances of the mean at k = 10
    reference, tuned = (planned(0.005, ms(4e-6 + 1e-6), ms(1e-6 + 1e-6), ms(1e-6), cap=cap)
                        for cap in (study.MAX_PLANNED_SEEDS, 10))
    assert reference.planned_k == tuned.planned_k == 17
    assert reference.more_seeds_can_decide and not tuned.more_seeds_can_decide


def test_the_next_step_names_the_planned_seeds_where_each_recipe_declares_them():
    """The reference study's planned seeds go into params.yaml's study.seeds; a tuned study's are named to
    `make study RECIPE=tuned` (its committed aggregate keeps them)."""
    from dataclasses import replace

    from fashion_compare.results import Plan

    runs = [seed_run(seed, r, c) for seed, r, c in zip((1, 2, 3, 4), [0.91, 0.912, 0.908, 0.91], [0.90] * 4)]
    result = study.aggregate(runs, SETTINGS)
    contender = result.contenders["resnet"]
    contender = replace(contender, verdict=replace(contender.verdict, plan=Plan(0.8, 20, 0.001, 7, True)))
    result = replace(result, contenders={"resnet": contender})
    assert "set `study.seeds: [1, 2, 3, 4, 5, 6, 7]` in params.yaml" in study.next_step(result, [1, 2, 3, 4])
    assert 'run `make study RECIPE=tuned SEEDS="5 6 7"`' in study.next_step(result, [1, 2, 3, 4], "tuned")


def planned(mean, se_seeds, se_images, se_interaction, k=10, n=10000, cap=study.MAX_PLANNED_SEEDS):
    from fashion_compare.uncertainty import Estimate

    return study.plan(Estimate(mean, 0.0, 10, k, n, se_seeds, se_images, se_interaction), margin=0.01, alpha=0.05,
                      cap=cap)


def test_the_planner_says_how_many_seeds_would_decide_or_that_none_can():
    # components as variances of the mean at k = 10: seeds 4e-6 (per seed 4e-5), images 1e-6, interaction 1e-6
    ms = lambda variance: np.sqrt(variance)  # noqa: E731  (se of each source alone, interaction included)
    near = planned(0.0065, ms(4e-6 + 1e-6), ms(1e-6 + 1e-6), ms(1e-6))
    z = stats.norm.ppf(0.95) + stats.norm.ppf(0.8)
    # K such that (4e-5 + 1e-5) / K + 1e-6 <= (0.0035 / z) ** 2
    expected = int(np.ceil(5e-5 / ((0.0035 / z) ** 2 - 1e-6)))
    assert near.planned_k == expected and near.more_seeds_can_decide == (expected <= 20)
    # the test-set part alone (se 0.3 points) is wider than the distance to the margin over z: no K can decide
    floor = planned(0.0095, ms(4e-6 + 9e-6), ms(9e-6 + 1e-6), ms(1e-6))
    assert floor.planned_k is None and not floor.more_seeds_can_decide
    assert floor.test_set_floor_se == pytest.approx(0.003)
    # far from the margin, but the seeds were too few: beyond the cap of 20
    beyond = planned(0.004, ms(4e-4 + 1e-6), ms(2e-6), ms(1e-6))
    assert beyond.planned_k > 20 and not beyond.more_seeds_can_decide


def test_seeds_from_two_cpu_kinds_get_the_gain_per_kind():
    epyc = CpuKind("AuthenticAMD", "25", "17", "AVX-512 BF16", "AMD EPYC")
    xeon = CpuKind("GenuineIntel", "6", "143", "AVX-512", "Intel Xeon")
    runs = [seed_run(seed, 0.9 + seed / 100, 0.9, record=RunRecord(kind, {"resnet": 60.0, "cnn": 10.0 * seed}, {}))
            for seed, kind in zip((1, 2, 3), (epyc, epyc, xeon))]
    result = study.aggregate(runs, SETTINGS)
    assert result.contenders["resnet"].per_cpu_kind == {
        "AuthenticAMD family 25 model 17, AVX-512 BF16": CpuKindGain((1, 2), pytest.approx(0.015)),
        "GenuineIntel family 6 model 143, AVX-512": CpuKindGain((3,), pytest.approx(0.03))}
    assert study.aggregate(runs[:2], SETTINGS).contenders["resnet"].per_cpu_kind is None
    # 60 s over 10, 20 and 30 s: median, min, max
    assert result.contenders["resnet"].train_time_ratio == CostRatio(3.0, 2.0, 6.0)
    assert [row.run for row in result.per_seed] == [run.record for run in runs]


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
    assert study.aggregate(runs, SETTINGS).k == 2


def test_failed_seeds_are_named_not_dropped_silently():
    runs = [seed_run(1, 0.9, 0.9), seed_run(2, 0.91, 0.9)]
    result = study.aggregate(runs, SETTINGS, failed={3: "train_resnet: out of memory"})
    assert result.failed_seeds == {"3": "train_resnet: out of memory"}
    assert "seed 3: train_resnet: out of memory" in reports.study_summary(result, TITLES)


def test_the_committed_study_is_what_its_seeds_predictions_give():
    """metrics/study.json against numbers computed here from the committed seed folders, independently of the
    project's code: pandas for the seed x image mean squares, scipy for the t quantiles."""
    from pathlib import Path

    import pandas as pd

    from fashion_compare import results

    repo = Path(__file__).resolve().parent.parent
    result = results.load(results.StudyResult, repo / "metrics/study.json")
    frames = [pd.read_csv(repo / f"metrics/study/seeds/{seed}/predictions.csv").assign(seed=seed)
              for seed in result.seeds]
    table = pd.concat(frames)
    table["d"] = (table["resnet"] == table["label"]).astype(float) - (table["cnn"] == table["label"]).astype(float)
    k, n = len(frames), len(frames[0])
    grand = table["d"].mean()
    seed_means, image_means = table.groupby("seed")["d"].mean(), table.groupby("image")["d"].mean()
    ms_seed = n * ((seed_means - grand) ** 2).sum() / (k - 1)
    ms_image = k * ((image_means - grand) ** 2).sum() / (n - 1)
    residual = table["d"] - table["seed"].map(seed_means) - table["image"].map(image_means) + grand
    ms_error = (residual ** 2).sum() / ((k - 1) * (n - 1))
    combined = ms_seed + ms_image - ms_error
    df = combined ** 2 / (ms_seed ** 2 / (k - 1) + ms_image ** 2 / (n - 1) + ms_error ** 2 / ((k - 1) * (n - 1)))
    se = np.sqrt(combined / (k * n))
    gain = result.contenders["resnet"].accuracy_gain
    assert gain.mean == pytest.approx(grand) and gain.se == pytest.approx(se) and gain.df == pytest.approx(df)
    half = stats.t.ppf(0.975, df) * se
    assert gain.ci == pytest.approx([grand - half, grand + half])
    one_sided = stats.t.ppf(0.95, df) * se
    verdict = result.contenders["resnet"].verdict
    assert (verdict.lower, verdict.upper) == pytest.approx((grand - one_sided, grand + one_sided))
    expected = ("worth it" if grand - one_sided >= 0.01 else "not worth it" if grand + one_sided < 0.01
                else "undecided")
    assert verdict.decision == expected


def test_seeds_from_before_the_recipe_knobs_compare_with_todays_reference_recipe():
    import subprocess

    """A seed folder's params.yaml written before weight_decay, schedule and augment existed ran the reference
    recipe (Adam, no augmentation, StepLR exactly where a step_size was set): it agrees with today's params."""
    import yaml

    legacy = subprocess.run(["git", "show", "5f599bc:params.yaml"], capture_output=True, text=True)
    if legacy.returncode != 0:
        pytest.skip("this clone lacks commit 5f599bc (a shallow clone)")
    today, before = yaml.safe_load(legacy.stdout), yaml.safe_load(legacy.stdout)  # the pair's layout
    for model in ("resnet", "cnn"):
        for knob in ("weight_decay", "schedule", "augment"):
            before[model].pop(knob)
    before.pop("tune")
    assert study.comparable_params(before) == study.comparable_params(today)
    before["resnet"]["step_size"] = None  # that was a constant rate: not today's StepLR
    assert study.comparable_params(before)["resnet.schedule"] == "constant" != \
        study.comparable_params(today)["resnet.schedule"]


def test_params_in_todays_layout_compare_with_every_default_spelled_out_and_name_what_they_compare():
    """A seed folder's params.yaml of models as data: compared through today's validation (a knob left out is its
    default), its baseline and contenders among what must agree; one of the pair's layout compares the pair."""
    import yaml

    today = yaml.safe_load(open("params.yaml"))
    terse = yaml.safe_load(open("params.yaml"))
    terse["models"]["cnn"]["recipe"].pop("label_smoothing")
    assert study.comparable_params(terse) == study.comparable_params(today)
    assert study.comparable_params(today)["compare.contenders"] == ["resnet"]
    assert study.compared_models(today) == ("cnn", ("resnet",))
    assert study.compared_models(PARAMS) == ("cnn", ("resnet",))  # the pair's layout
    wider = {**today, "compare": {**today["compare"], "contenders": ["resnet", "resnet_small"]}}
    assert study.comparable_params(wider) != study.comparable_params(today)


def test_a_study_of_two_contenders_decides_each_with_holm_across_them():
    """Three models per seed: each contender against the baseline, Holm's across the two."""
    from statsmodels.stats.multitest import multipletests

    settings = SETTINGS.model_copy(update={"contenders": ["resnet", "wide"]})
    runs = []
    for seed, (r, w, c) in enumerate([(0.91, 0.95, 0.90), (0.912, 0.952, 0.90), (0.908, 0.951, 0.90),
                                      (0.91, 0.953, 0.90)], start=1):
        run = seed_run(seed, r, c, compare={"baseline": "cnn", "contenders": ["resnet", "wide"]})
        run.predictions["wide"] = predictions_with_accuracy(w, 5 * seed)
        runs.append(run)
    result = study.aggregate(runs, settings)
    assert result.baseline == "cnn" and list(result.contenders) == ["resnet", "wide"]
    assert list(result.models) == ["resnet", "wide", "cnn"]
    assert result.contenders["wide"].verdict.decision == "worth it"
    assert result.contenders["resnet"].verdict.decision == "undecided"
    verdicts = [c.verdict for c in result.contenders.values()]
    assert all(v.family == 2 for v in verdicts)
    worth = multipletests([v.p_null_gain_at_most_margin for v in verdicts], alpha=0.05, method="holm")[0]
    assert [v.decision == "worth it" for v in verdicts] == list(worth)
    assert set(result.per_seed[0].test_accuracy) == {"resnet", "wide", "cnn"}
    assert set(result.per_seed[0].contenders) == {"resnet", "wide"}
    summary = reports.study_summary(result, {**TITLES, "wide": "Wide"})
    assert "### Wide against Small CNN" in summary and "Holm's" in summary
