"""Benchmark: how much of the CPU's arithmetic a training step uses, and the evaluate stage's inference speed.

    python benchmarks/compute.py   (needs data/prepared)

achieved FLOP/s of the bare training loop (FLOPs of one step, counted by torch's FlopCounterMode, times the
steps per second that training_speed.py measured; run it first) against float32 matmul FLOP/s on this
machine; and test-set inference in images/s, as the evaluate stage runs it.
"""

import json
import time

import torch  # noqa: E402
from common import REPO, REPORT, exit_on_error, record, say
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from fashion_compare import cpu_speedups, data, evaluation, models  # noqa: E402
from fashion_compare.params import load_params, train_config  # noqa: E402


def training_step_flops(config):
    model = models.build_model(config.architecture, config.options).train()
    batch_size = config.batch_size
    x, y = torch.rand(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops()


def matmul_flops_per_second(size=2048, repeats=10):
    a, b = torch.rand(size, size), torch.rand(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


@exit_on_error
def main():
    params = load_params(REPO / "params.yaml")
    matmul = matmul_flops_per_second()
    record("compute", "matmul_gflops", matmul / 1e9)
    say(f"float32 matmul: {matmul / 1e9:.1f} GFLOP/s")
    speeds = json.loads(REPORT.read_text()).get("training_speed", {}) if REPORT.exists() else {}
    test_set = data.load_split(REPO / "data/prepared", "test")
    for name in ("resnet", "cnn"):
        config = train_config(params, name)
        flops = training_step_flops(config)
        row = {"step_gflop": flops / 1e9}
        if name in speeds:
            achieved = flops * speeds[name]["bare_images_per_s"] / config.batch_size
            row.update(achieved_gflops=achieved / 1e9, flops_over_matmul=achieved / matmul)
        model = cpu_speedups.use_small_map_convolutions(models.build_model(config.architecture, config.options))
        evaluation.predict_probabilities(model, test_set["images"][:1000], params.evaluate.batch_size,
                                         torch.device("cpu"))
        started = time.perf_counter()
        evaluation.predict_probabilities(model, test_set["images"], params.evaluate.batch_size, torch.device("cpu"))
        row["evaluate_images_per_s"] = len(test_set["labels"]) / (time.perf_counter() - started)
        record("compute", name, row)
        say(f"{name}: {row}")


if __name__ == "__main__":
    main()
