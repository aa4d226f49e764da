"""Benchmark: the seed study's aggregate of 20 seeds (goal: under 10 s), on synthetic per-image predictions.

    python benchmarks/study_aggregate.py [--seeds 20]

Each seed's predictions are drawn like the real ones (10,000 test images, ~91 % accuracy, the models agreeing
on most images); what is timed is what `make study` does after loading the seed folders: the statistics
(study.aggregate, deepsig's ASO among them), the summary, the plot tables and the four figures.
"""

import argparse
import time

import numpy as np
from common import exit_on_error, record, say

from fashion_compare import plots, study  # noqa: E402
from fashion_compare.params import CompareParams  # noqa: E402

GOAL_SECONDS = 10.0


def synthetic_runs(seeds: int, images=10_000, seed=0) -> list:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, images)
    hard = rng.random(images)  # per image: how hard it is, shared by every seed and both models
    runs = []
    for index in range(seeds):
        predictions = {"label": labels}
        for model, skill in (("resnet", 0.916), ("cnn", 0.910)):
            right = rng.random(images) * 0.3 + hard * 0.7 < skill + rng.normal(0, 0.002)
            predictions[model] = np.where(right, labels, (labels + rng.integers(1, 10, images)) % 10)
        runs.append(study.SeedRun(42 + index, {"seed": 42 + index, "lr": 0.001}, predictions))
    return runs


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    runs = synthetic_runs(args.seeds)
    started = time.perf_counter()
    result = study.aggregate(runs, CompareParams())
    study.study_summary(result)
    study.plot_rows(result)
    for draw in (plots.seed_accuracy, plots.seed_forest, plots.seed_gains, plots.noise_sources):
        plots.close(draw(result))
    seconds = time.perf_counter() - started
    say(f"aggregate of {args.seeds} seeds: {seconds:.1f} s ({seconds / GOAL_SECONDS:.2f} of the "
        f"{GOAL_SECONDS:.0f} s goal)")
    record("study_aggregate", f"{args.seeds}_seeds", {"seconds": seconds, "goal_seconds": GOAL_SECONDS,
                                                       "ratio_to_goal": seconds / GOAL_SECONDS})


if __name__ == "__main__":
    main()
