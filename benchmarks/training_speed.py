"""Benchmark: the project's training loop against bare PyTorch loops, side by side in one process.

    python benchmarks/training_speed.py            (after `make repro`: uses data/prepared)

Prints a table and writes metrics/benchmark.json. Goals are ratios, so the machine's speed cancels out:
- stage/plain: the training stage against the loop a user would write first (stock torchvision
  ResNet18 with nn.Conv2d everywhere, or the CNN in contiguous memory; default Adam): >= 2.5 for
  ResNet18 at batch 20 on a CPU, >= 1.2 for the CNN;
- stage/bare >= 0.95: the stage against a minimal loop over the same model and optimizer (what the
  stage adds: batching, MLflow logging, resume state, progress bars);
- achieved FLOP/s / matmul FLOP/s (ResNet18, batch 20), evaluate stage inference in images/s,
  peak RSS per stage <= 3 GiB, no-op `dvc repro` <= 3 s.
"""

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from fashion_compare import data, evaluation, models, tracking, training
from fashion_compare.files import save_torch, write_json
from fashion_compare.params import load_params, train_config

REPO = Path(__file__).resolve().parent.parent


def plain_model(name):
    """The model as a user would first write it: for ResNet18, stock torchvision with nn.Conv2d."""
    return models.to_stock(models.build_model(name))


def bare_loop(name, batches, channels_last=False, plain=False):
    """The minimal loop: forward, loss, backward, Adam step, over pre-made batches. Returns seconds.
    `plain`: the stock model and default Adam; otherwise the project's model and optimizer."""
    training.seed_everything(0)
    model = (plain_model(name) if plain else models.build_model(name)).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    optimizer = (torch.optim.Adam(model.parameters(), lr=1e-3) if plain
                 else training.make_optimizer(model, 1e-3, torch.device("cpu")))
    loss_fn = torch.nn.CrossEntropyLoss()
    started = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    return time.perf_counter() - started


def stage_loop(name, config, train_set, val_set, workdir):
    """The project's loop as the train stage runs it: MLflow run and per-epoch logging to a temporary
    sqlite store, progress bars, then the checkpoint. Returns seconds."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    tracker = tracking.Tracker("benchmark")  # connecting (schema creation) happens once per stage: not timed
    started = time.perf_counter()
    run_id = tracker.start_run(name, config.model_dump(), {"dvc.stage": "benchmark"})
    training.seed_everything(config.seed)
    model = models.build_model(name)
    resume = training.ResumeFile(workdir / "resume.pt", "benchmark")  # saved after every epoch, as in the stage
    result = training.train(model, train_set, val_set, config, observers=[tracking.EpochLogger(tracker, run_id)],
                            quiet=False, resume=resume)
    save_torch(workdir / f"{name}.pt", training.checkpoint(result, config, models.parameter_count(model)))
    tracker.end_run(run_id)
    return time.perf_counter() - started


def training_step_flops(name, batch_size):
    model = models.build_model(name).train()
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


# A forked child keeps its parent's RSS high-water mark through exec, so the child is started from this
# small wrapper process rather than from the (large) benchmark process, and the wrapper reports its peak.
RSS_WRAPPER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_of(command, cwd, env):
    """Run a command; return (exit status, its peak resident set size in GiB)."""
    out = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *command], cwd=cwd, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0]), int(out[1]) / 2**20  # ru_maxrss is in KiB on Linux


def stage_memory(subset):
    """Peak RSS of each stage script, run in a scratch copy (prepare on the full data, training on `subset`)."""
    scratch = Path(tempfile.mkdtemp(prefix="fashion-bench-"))
    try:
        for item in ("stages", "params.yaml"):
            (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, scratch / item)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}", "DVC_ROOT": str(scratch)}
        python = sys.executable
        peaks = {"prepare (full data)": peak_rss_of([python, "stages/prepare.py"], scratch, env)}
        smoke = yaml.safe_load((scratch / "params.yaml").read_text())
        smoke["data"]["subset"], smoke["epochs"], smoke["resnet"]["epochs"] = subset, 1, 1
        (scratch / "params.yaml").write_text(yaml.safe_dump(smoke))
        peaks[f"prepare (subset {subset})"] = peak_rss_of([python, "stages/prepare.py"], scratch, env)
        for name, command in (("train_resnet", ["stages/train.py", "resnet"]),
                              ("train_cnn", ["stages/train.py", "cnn"]),
                              ("evaluate", ["stages/evaluate.py"]), ("compare", ["stages/compare.py"])):
            peaks[f"{name} (subset {subset})"] = peak_rss_of([python, *command], scratch, env)
        return {stage: round(gib, 3) for stage, (status, gib) in peaks.items() if status == 0}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def noop_repro_seconds():
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    status = subprocess.run(["dvc", "status", "--json"], cwd=REPO, capture_output=True, text=True, env=env)
    if status.returncode != 0 or status.stdout.strip() != "{}":
        return None  # not up to date: a repro would run stages, which is not what this measures
    started = time.perf_counter()
    subprocess.run(["dvc", "repro"], cwd=REPO, capture_output=True, check=True, env=env)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resnet-steps", type=int, default=300, help="ResNet18 training steps per measurement")
    parser.add_argument("--cnn-steps", type=int, default=450, help="CNN training steps (one epoch of 45k)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved bare/stage pairs; the best counts")
    parser.add_argument("--memory-subset", type=int, default=2000)
    parser.add_argument("--out", default=str(REPO / "metrics" / "benchmark.json"))
    args = parser.parse_args()
    os.chdir(REPO)
    params = load_params("params.yaml")
    train_set, val_set = data.load_split("data/prepared", "train"), data.load_split("data/prepared", "val")
    test_set = data.load_split("data/prepared", "test")
    matmul = matmul_flops_per_second()
    report = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "cuda": torch.cuda.is_available()},
              "matmul_gflops": matmul / 1e9, "models": {}}
    workdir = Path(tempfile.mkdtemp(prefix="fashion-bench-"))
    try:
        for name in ("resnet", "cnn"):
            config = train_config(params, name).model_copy(update={"epochs": 1, "device": "cpu"})
            steps = args.resnet_steps if name == "resnet" else args.cnn_steps
            images = steps * config.batch_size
            subset = {"images": train_set["images"][:images].clone(), "labels": train_set["labels"][:images].clone()}
            val_subset = {key: tensor[:config.batch_size] for key, tensor in val_set.items()}
            batches = [(subset["images"][i:i + config.batch_size], subset["labels"][i:i + config.batch_size])
                       for i in range(0, images, config.batch_size)]
            bare_loop(name, batches[:5])  # warm-up
            bare_loop(name, batches[:5], plain=True)
            bare, plain, stage = float("inf"), float("inf"), float("inf")
            for _ in range(args.repeats):  # interleaved, so drifts of the machine hit all alike
                plain = min(plain, bare_loop(name, batches, plain=True))
                bare = min(bare, bare_loop(name, batches, config.channels_last))
                stage = min(stage, stage_loop(name, config, subset, val_subset, workdir))
            bare_other_format = bare_loop(name, batches, not config.channels_last)
            flops = training_step_flops(name, config.batch_size) * steps / bare
            model = models.build_model(name)
            evaluation.predict(model, test_set["images"][:1000], params.evaluate.batch_size, torch.device("cpu"))
            started = time.perf_counter()
            evaluation.predict(model, test_set["images"], params.evaluate.batch_size, torch.device("cpu"))
            inference = len(test_set["labels"]) / (time.perf_counter() - started)
            report["models"][name] = {
                "batch_size": config.batch_size, "steps": steps, "plain_images_per_s": images / plain,
                "bare_images_per_s": images / bare, "stage_images_per_s": images / stage,
                "stage_over_plain": plain / stage, "stage_over_bare": bare / stage, "achieved_gflops": flops / 1e9,
                "flops_over_matmul": flops / matmul, "evaluate_images_per_s": inference,
                "memory_format": "channels_last" if config.channels_last else "contiguous",
                "bare_other_memory_format_images_per_s": images / bare_other_format}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["peak_rss_gib"] = stage_memory(args.memory_subset)
    report["noop_repro_seconds"] = noop_repro_seconds()
    report["peak_rss_gib"]["benchmark process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    write_json(args.out, report)

    print(f"\nmachine: {report['machine']}; float32 matmul {report['matmul_gflops']:.1f} GFLOP/s")
    print(f"{'model':8} {'batch':>5} {'plain img/s':>11} {'bare img/s':>11} {'stage img/s':>12} {'stage/plain':>11} "
          f"{'stage/bare':>10} {'GFLOP/s':>8} {'/matmul':>8} {'eval img/s':>10} {'format':>13} "
          f"{'bare, other format img/s':>24}")
    for name, row in report["models"].items():
        print(f"{name:8} {row['batch_size']:>5} {row['plain_images_per_s']:>11.1f} {row['bare_images_per_s']:>11.1f} "
              f"{row['stage_images_per_s']:>12.1f} {row['stage_over_plain']:>11.3f} "
              f"{row['stage_over_bare']:>10.3f} {row['achieved_gflops']:>8.1f} {row['flops_over_matmul']:>8.3f} "
              f"{row['evaluate_images_per_s']:>10.1f} {row['memory_format']:>13} "
              f"{row['bare_other_memory_format_images_per_s']:>24.1f}")
    for stage, gib in report["peak_rss_gib"].items():
        print(f"peak RSS {stage}: {gib:.2f} GiB")
    noop = report["noop_repro_seconds"]
    print(f"no-op dvc repro: {noop:.2f} s" if noop is not None else "no-op dvc repro: not measured (not up to date)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
