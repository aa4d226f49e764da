"""Benchmark: each declared model's training speed in fp32 and, where the CPU has bfloat16, in bf16 (autocast,
channels_last beside it), and a paired check of what bf16 does to validation accuracy.

    python benchmarks/precision.py [--model resnet resnet_small cnn] [--steps 60] [--repeats 2]
                                   [--check-images 9000] [--check-epochs 3]   (needs data/prepared)

Speed: the project's training loop (training.train, one epoch of `steps` batches of the model's recipe, tiny
validation) in a fresh process per measurement, fp32 and bf16 taking turns, the best of `repeats` rounds:
training images per second and bf16 / fp32. The recipe's precision is what params.yaml says; this benchmark
switches it for the measurement only. Paired check: the same seed, data and recipe, `check-epochs` epochs on a
stratified `check-images` subset of the training split, scored on the whole validation split, fp32 against
bf16, beside fp32 with the next seed (the yardstick: what a change of seed alone does). Every figure goes to
metrics/benchmark.json under `precision` (with the CPU kind and threads), as it is measured.
"""

import argparse
import json
import time

import torch
from common import REPO, exit_on_error, in_fresh_process, record, say  # puts this checkout's package first on the path

from fashion_compare import data, models, process, training  # noqa: E402
from fashion_compare.params import load_params, train_config  # noqa: E402
from fashion_compare.tools import cpu_kind  # noqa: E402


def has_bf16() -> bool:
    """The CPU computes bfloat16 natively (AVX-512 BF16 or AMX): elsewhere autocast emulates it, slowly."""
    flags = open("/proc/cpuinfo").read().split("\n\n")[0]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def config_for(name, precision, **changes):
    config = train_config(load_params(REPO / "params.yaml"), name)
    return config.model_copy(update={"precision": precision, "device": "cpu",
                                     "channels_last": config.channels_last or precision == "bf16", **changes})


def images_per_second(name, precision, steps) -> float:
    """In this process (a fresh one): one epoch of `steps` batches through training.train, after a warm-up."""
    torch.set_num_threads(training.thread_count("auto"))
    process.keep_freed_memory()
    config = config_for(name, precision, epochs=1)
    train_set = data.load_split(REPO / "data/prepared", "train")
    chosen = torch.randperm(len(train_set["labels"]), generator=torch.Generator().manual_seed(0))
    subset = {key: tensor[chosen[:steps * config.batch_size]] for key, tensor in train_set.items()}
    warm_up = {key: tensor[:5 * config.batch_size] for key, tensor in subset.items()}
    tiny_val = {key: tensor[:config.batch_size] for key, tensor in subset.items()}
    cpu = torch.device("cpu")
    training.train(models.build_model(config.architecture, config.options), warm_up, tiny_val, config, cpu, quiet=True)
    training.seed_everything(config.seed)
    model = models.build_model(config.architecture, config.options)
    started = time.perf_counter()
    training.train(model, subset, tiny_val, config, cpu, quiet=True)
    return len(subset["labels"]) / (time.perf_counter() - started)


def paired_check(name, images, epochs) -> dict:
    """Validation accuracy after `epochs` epochs on `images` training images, fp32 and bf16, same seed; and fp32
    with the next seed, the yardstick: how far a change of seed alone moves the same figure (bf16's rounding
    sends training down another path, as a seed does)."""
    torch.set_num_threads(training.thread_count("auto"))
    process.keep_freed_memory()
    prepared = REPO / "data/prepared"
    train_set, val_set = data.load_split(prepared, "train"), data.load_split(prepared, "val")
    index = data.stratified_indices(train_set["labels"].numpy(), images, 0)
    subset = {key: tensor[index] for key, tensor in train_set.items()}
    accuracy = {}
    for run, precision, seed_change in (("fp32", "fp32", 0), ("bf16", "bf16", 0), ("fp32_next_seed", "fp32", 1)):
        config = config_for(name, precision, epochs=epochs)
        config = config.model_copy(update={"seed": config.seed + seed_change})
        training.seed_everything(config.seed)
        model = models.build_model(config.architecture, config.options)
        result = training.train(model, subset, val_set, config, torch.device("cpu"), quiet=True)
        accuracy[run] = result.epochs[-1].val_accuracy
    return {"images": len(index), "epochs": epochs, "seed": config.seed - 1, "fp32_val_accuracy": accuracy["fp32"],
            "bf16_val_accuracy": accuracy["bf16"], "fp32_next_seed_val_accuracy": accuracy["fp32_next_seed"],
            "bf16_minus_fp32_points": 100 * (accuracy["bf16"] - accuracy["fp32"]),
            "next_seed_minus_fp32_points": 100 * (accuracy["fp32_next_seed"] - accuracy["fp32"])}


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", help="models of params.yaml's models (default: every one)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--check-images", type=int, default=9000)
    parser.add_argument("--check-epochs", type=int, default=3)
    parser.add_argument("--measure", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps({"images_per_s": images_per_second(*args.measure, args.steps)}))
        return
    names = args.model or list(load_params(REPO / "params.yaml").models)
    precisions = ("fp32", "bf16") if has_bf16() else ("fp32",)
    kind = cpu_kind()
    say(f"CPU: {kind['name']} ({kind['vendor']} family {kind['family']} model {kind['model']}, {kind['isa']}); "
        f"{'bf16 measured' if len(precisions) > 1 else 'no native bf16: fp32 only'}")
    for name in names:
        best = {precision: 0.0 for precision in precisions}
        for round_number in range(1, args.repeats + 1):
            for precision in precisions:
                speed = in_fresh_process(REPO / "benchmarks/precision.py", "--measure", name, precision, "--steps",
                                         str(args.steps))["images_per_s"]
                best[precision] = max(best[precision], speed)
                say(f"  {name} round {round_number}: {precision} {speed:8.1f} img/s")
        row = {"cpu_kind": kind, "threads": training.thread_count("auto"), "steps": args.steps, "repeats": args.repeats,
               **{f"{precision}_images_per_s": value for precision, value in best.items()}}
        if "bf16" in best:
            row["bf16_over_fp32"] = best["bf16"] / best["fp32"]
            row["paired_check"] = paired_check(name, args.check_images, args.check_epochs)
        record("precision", name, row)
        say(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'cpu_kind'})}")


if __name__ == "__main__":
    main()
