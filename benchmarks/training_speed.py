"""Benchmark: the project's training loop against plain and bare PyTorch loops, side by side in one run.

    python benchmarks/training_speed.py            (after `make repro`: uses data/prepared)

Prints a table and writes metrics/benchmark.json. Each loop runs in a fresh Python process of its own
(the plain loop must not inherit the stage's process settings), the loops take turns (--repeats rounds,
the best of each counts), so a drift of the machine's speed hits all alike. Goals are ratios:
- stage/plain: the training stage against the loop a user would write first (stock torchvision
  ResNet18 with nn.Conv2d everywhere, or the CNN in contiguous memory; default Adam; a default
  process): >= 2.5 for ResNet18 at batch 20 on a CPU, >= 1.2 for the CNN;
- stage/bare >= 0.95: the stage against a minimal loop over the same model, optimizer and process
  settings (what the stage adds: batching, MLflow logging, resume state, progress bars);
- the speed-ups one at a time (ResNet18): plain, + fused Adam, + single-output convolutions as
  matrix products, + Adam on the kernel taps that meet data only, + the stage's process settings = bare;
- achieved FLOP/s / matmul FLOP/s (ResNet18, batch 20), evaluate stage inference in images/s,
  peak RSS per stage <= 3 GiB, no-op `dvc repro` <= 3 s.

    python benchmarks/training_speed.py --loop plain --model resnet --steps 300    (one measurement)
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # this checkout's package, as the stages use it

from fashion_compare import data, evaluation, models, tracking, training  # noqa: E402
from fashion_compare.files import save_torch, write_json  # noqa: E402
from fashion_compare.params import load_params, train_config  # noqa: E402


@dataclass(frozen=True)
class Loop:
    """One way of running the training steps: the model's form, the optimizer, the process settings."""
    convs: str = "small-map"  # small-map: the project's ResNet18 (SmallMapConv2d); stock: nn.Conv2d everywhere
    adam: str = "project"  # project: training.make_optimizer (fused, on ResNet18's live taps); fused: fused Adam
    # on model.parameters(); default: torch.optim.Adam's own choice (a for-loop over the tensors on CPU)
    process: str = "tuned"  # tuned: as the stage, training.keep_freed_memory and seed_everything (no NaN-fill)
    # plain: torch.manual_seed only
    memory_format: str = "config"  # config: the model's channels_last param; contiguous
    stage: bool = False  # the project's training loop as the stage runs it, instead of a minimal loop


LOOPS = {
    "plain": Loop(convs="stock", adam="default", process="plain", memory_format="contiguous"),
    "bare": Loop(),
    "stage": Loop(stage=True),
}
# ResNet18's speed-ups one at a time, each on top of the ones before
ABLATION = {
    "plain": LOOPS["plain"],
    "+ fused Adam": Loop(convs="stock", adam="fused", process="plain", memory_format="contiguous"),
    "+ single-output convolutions": Loop(adam="fused", process="plain", memory_format="contiguous"),
    "+ Adam on the live taps only": Loop(process="plain", memory_format="contiguous"),
    "+ malloc keeps freed memory, no NaN-fill (= bare)": LOOPS["bare"],
}


def steps_of(name, params, steps):
    """`steps` batches of the prepared training data (the same random images for every loop; the split is
    stored sorted by class), and the config of `name`."""
    config = train_config(params, name).model_copy(update={"epochs": 1, "device": "cpu"})
    train_set = data.load_split(REPO / "data/prepared", "train")
    chosen = torch.randperm(len(train_set["labels"]), generator=torch.Generator().manual_seed(0))
    chosen = chosen[:steps * config.batch_size]
    return config, {"images": train_set["images"][chosen], "labels": train_set["labels"][chosen]}


def bare_loop(name, loop: Loop, config, subset):
    """The minimal loop: forward, loss, backward, Adam step, over pre-made batches. Returns seconds."""
    model = models.build_model(name)
    if loop.convs == "stock":
        model = models.to_stock(model)
    model.train()
    channels_last = config.channels_last and loop.memory_format == "config"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    batches = [(x.contiguous(memory_format=memory_format), y)
               for x, y in zip(subset["images"].split(config.batch_size), subset["labels"].split(config.batch_size))]
    optimizer = {"project": lambda: training.make_optimizer(model, config.lr, torch.device("cpu")),
                 "fused": lambda: torch.optim.Adam(model.parameters(), lr=config.lr, fused=True),
                 "default": lambda: torch.optim.Adam(model.parameters(), lr=config.lr)}[loop.adam]()
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    for x, y in batches[:5]:  # warm-up: oneDNN primitives, allocator, caches
        step(x, y)
    started = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return time.perf_counter() - started


def stage_loop(name, config, subset):
    """The project's loop as the train stage runs it: MLflow run and per-epoch logging to a temporary
    sqlite store, progress bars, validation, the resume state, then the checkpoint. Returns seconds."""
    workdir = Path(tempfile.mkdtemp(prefix="fashion-bench-"))
    try:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        tracker = tracking.Tracker("benchmark")  # connecting (schema creation) happens once per stage: not timed
        val_subset = {key: tensor[:config.batch_size] for key, tensor in subset.items()}
        warm_up = {key: tensor[:5 * config.batch_size] for key, tensor in subset.items()}
        training.train(models.build_model(name), warm_up, val_subset, config, quiet=True)
        started = time.perf_counter()
        run_id = tracker.start_run(name, config.model_dump(), {"dvc.stage": "benchmark"})
        training.seed_everything(config.seed)
        model = models.build_model(name)
        resume = training.ResumeFile(workdir / "resume.pt", "benchmark")  # saved after every epoch, as in the stage
        result = training.train(model, subset, val_subset, config, quiet=False, resume=resume,
                                observers=[tracking.EpochLogger(tracker, run_id)])
        save_torch(workdir / f"{name}.pt", training.checkpoint(result, config, models.parameter_count(model)))
        tracker.end_run(run_id)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(name, loop: Loop, steps):
    """Run one loop in this process (a fresh one: see `run_measurement`). Returns seconds."""
    torch.set_num_threads(training.thread_count("auto"))
    if loop.process == "tuned":
        training.keep_freed_memory()
        training.seed_everything(0)
    else:
        torch.manual_seed(0)
    config, subset = steps_of(name, load_params(REPO / "params.yaml"), steps)
    return stage_loop(name, config, subset) if loop.stage else bare_loop(name, loop, config, subset)


def run_measurement(name, loop: Loop, steps):
    """Seconds for `steps` training steps of `loop`, measured in a fresh Python process."""
    command = [sys.executable, __file__, "--model", name, "--steps", str(steps),
               "--loop-json", json.dumps(asdict(loop))]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"measurement {name} {loop} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def best_of_interleaved(name, loops: dict, steps, repeats):
    """Images per second of each loop: the loops take turns, `repeats` rounds, the fastest round counts."""
    seconds = {label: float("inf") for label in loops}
    for _ in range(repeats):
        for label, loop in loops.items():
            seconds[label] = min(seconds[label], run_measurement(name, loop, steps))
    images = steps * train_config(load_params(REPO / "params.yaml"), name).batch_size
    return {label: images / value for label, value in seconds.items()}


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
    parser.add_argument("--resnet-steps", type=int, default=600, help="ResNet18 training steps per measurement")
    parser.add_argument("--ablation-steps", type=int, default=300, help="ResNet18 steps per speed-up measurement")
    parser.add_argument("--cnn-steps", type=int, default=450, help="CNN training steps (one epoch of 45k)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of interleaved loops; the best counts")
    parser.add_argument("--no-ablation", action="store_true", help="skip ResNet18's speed-ups one at a time")
    parser.add_argument("--memory-subset", type=int, default=2000)
    parser.add_argument("--out", default=str(REPO / "metrics" / "benchmark.json"))
    parser.add_argument("--loop", choices=sorted(LOOPS), help="measure one loop (in this process) and exit")
    parser.add_argument("--loop-json", help=argparse.SUPPRESS)  # a Loop, from run_measurement
    parser.add_argument("--model", choices=["resnet", "cnn"], default="resnet")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if args.loop or args.loop_json:
        loop = LOOPS[args.loop] if args.loop else Loop(**json.loads(args.loop_json))
        seconds = measure(args.model, loop, args.steps)
        print(json.dumps({"seconds": seconds}))
        return

    os.chdir(REPO)
    params = load_params("params.yaml")
    test_set = data.load_split("data/prepared", "test")
    matmul = matmul_flops_per_second()
    report = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "cuda": torch.cuda.is_available()},
              "matmul_gflops": matmul / 1e9, "repeats": args.repeats, "models": {}}
    for name in ("resnet", "cnn"):
        config = train_config(params, name)
        steps = args.resnet_steps if name == "resnet" else args.cnn_steps
        speed = best_of_interleaved(name, LOOPS, steps, args.repeats)
        flops = training_step_flops(name, config.batch_size) * speed["bare"] / config.batch_size
        model = models.build_model(name)
        evaluation.predict(model, test_set["images"][:1000], params.evaluate.batch_size, torch.device("cpu"))
        started = time.perf_counter()
        evaluation.predict(model, test_set["images"], params.evaluate.batch_size, torch.device("cpu"))
        inference = len(test_set["labels"]) / (time.perf_counter() - started)
        report["models"][name] = {
            "batch_size": config.batch_size, "steps": steps, "plain_images_per_s": speed["plain"],
            "bare_images_per_s": speed["bare"], "stage_images_per_s": speed["stage"],
            "stage_over_plain": speed["stage"] / speed["plain"], "stage_over_bare": speed["stage"] / speed["bare"],
            "achieved_gflops": flops / 1e9, "flops_over_matmul": flops / matmul, "evaluate_images_per_s": inference,
            "memory_format": "channels_last" if config.channels_last else "contiguous"}
    if not args.no_ablation:
        speed = best_of_interleaved("resnet", ABLATION, args.ablation_steps, args.repeats)
        report["resnet_speedups"] = {label: {"images_per_s": value, "over_plain": value / speed["plain"]}
                                     for label, value in speed.items()}
    report["peak_rss_gib"] = stage_memory(args.memory_subset)
    report["noop_repro_seconds"] = noop_repro_seconds()
    report["peak_rss_gib"]["benchmark process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    write_json(args.out, report)

    print(f"\nmachine: {report['machine']}; float32 matmul {report['matmul_gflops']:.1f} GFLOP/s; "
          f"best of {args.repeats} interleaved rounds, each loop in a fresh process")
    print(f"{'model':8} {'batch':>5} {'plain img/s':>11} {'bare img/s':>11} {'stage img/s':>12} {'stage/plain':>11} "
          f"{'stage/bare':>10} {'GFLOP/s':>8} {'/matmul':>8} {'eval img/s':>10} {'format':>13}")
    for name, row in report["models"].items():
        print(f"{name:8} {row['batch_size']:>5} {row['plain_images_per_s']:>11.1f} {row['bare_images_per_s']:>11.1f} "
              f"{row['stage_images_per_s']:>12.1f} {row['stage_over_plain']:>11.3f} "
              f"{row['stage_over_bare']:>10.3f} {row['achieved_gflops']:>8.1f} {row['flops_over_matmul']:>8.3f} "
              f"{row['evaluate_images_per_s']:>10.1f} {row['memory_format']:>13}")
    if "resnet_speedups" in report:
        print(f"\nResNet18, batch 20, the speed-ups one at a time (bare loop, {args.ablation_steps} steps):")
        for label, row in report["resnet_speedups"].items():
            print(f"  {label:50} {row['images_per_s']:>7.1f} img/s  {row['over_plain']:.2f}x plain")
    for stage, gib in report["peak_rss_gib"].items():
        print(f"peak RSS {stage}: {gib:.2f} GiB")
    noop = report["noop_repro_seconds"]
    print(f"no-op dvc repro: {noop:.2f} s" if noop is not None else "no-op dvc repro: not measured (not up to date)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
