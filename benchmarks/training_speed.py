"""Benchmark: the training stage's loop against a plain and a bare PyTorch loop, side by side in one run.

    python benchmarks/training_speed.py [--model resnet cnn] [--repeats 2]   (needs data/prepared)

Each loop runs in a fresh Python process of its own (the plain loop must not inherit the stage's process
settings); the loops take turns (--repeats rounds, the best of each counts), so a drift of the machine's
speed hits all alike. Goals are ratios:
- stage/plain: the training stage against the loop a user would write first (stock torchvision ResNet18,
  nn.Conv2d everywhere; the CNN in contiguous memory; default Adam; a default process):
  >= 2.5 for ResNet18 at batch 20 on a CPU, >= 1.2 for the CNN;
- stage/bare >= 0.95: the stage against a minimal loop over the same model, optimizer and process
  settings (what the stage adds: batch gathering, validation, MLflow logging, resume state, progress bars).

    python benchmarks/training_speed.py --loop plain --model resnet --steps 300    (one measurement)
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
from common import REPO, exit_on_error, in_fresh_process, record, say  # puts this checkout's package first on the path

from fashion_compare import cpu_speedups, data, models, process, recipes, tracking, training  # noqa: E402
from fashion_compare.files import save_torch  # noqa: E402
from fashion_compare.params import load_params, train_config  # noqa: E402


@dataclass(frozen=True)
class Loop:
    """One way of running the training steps: the model's form, the optimizer, the process settings."""
    convs: str = "small-map"  # small-map: SmallMapConv2d (cpu_speedups); stock: nn.Conv2d everywhere
    # project: as training.train on a CPU (fused Adam over ResNet18's live taps only); fused: fused Adam over
    # model.parameters(); default: torch.optim.Adam's own choice (a for-loop over the tensors on CPU)
    adam: str = "project"
    # tuned: as the stage, process.keep_freed_memory and seed_everything (no NaN-fill); plain: torch.manual_seed
    process: str = "tuned"
    memory_format: str = "config"  # config: the model's channels_last param; contiguous
    stage: bool = False  # the project's training loop as the stage runs it, instead of a minimal loop


LOOPS = {
    "plain": Loop(convs="stock", adam="default", process="plain", memory_format="contiguous"),
    "bare": Loop(),
    "stage": Loop(stage=True),
}


def steps_of(name, params, steps):
    """`steps` batches of the prepared training data (the same random images for every loop), and the config."""
    config = train_config(params, name).model_copy(update={"epochs": 1, "device": "cpu"})
    train_set = data.load_split(REPO / "data/prepared", "train")
    chosen = torch.randperm(len(train_set["labels"]), generator=torch.Generator().manual_seed(0))
    chosen = chosen[:steps * config.batch_size]
    return config, {"images": train_set["images"][chosen], "labels": train_set["labels"][chosen]}


def bare_loop(name, loop: Loop, config, subset):
    """The minimal loop: forward, loss, backward, Adam step, over pre-made batches. Returns seconds."""
    model = models.build_model(config.architecture, config.options)
    if loop.convs == "small-map":
        cpu_speedups.use_small_map_convolutions(model)
    model.train()
    channels_last = config.channels_last and loop.memory_format == "config"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    batches = [(x.contiguous(memory_format=memory_format), y)
               for x, y in zip(subset["images"].split(config.batch_size), subset["labels"].split(config.batch_size))]
    live_taps = lambda: cpu_speedups.prepare_for_cpu_training(model)  # noqa: E731  (as training.train on a CPU)
    optimizer = {"project": lambda: recipes.make_optimizer(live_taps(), config, torch.device("cpu")),
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
    workdir = tempfile.mkdtemp(prefix="fashion-bench-")
    try:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir}/mlflow.db"
        tracker = tracking.Tracker("benchmark")  # connecting (schema creation) happens once per stage: not timed
        val_subset = {key: tensor[:config.batch_size] for key, tensor in subset.items()}
        warm_up = {key: tensor[:5 * config.batch_size] for key, tensor in subset.items()}
        training.train(models.build_model(config.architecture, config.options), warm_up, val_subset, config,
                       torch.device("cpu"), quiet=True)
        started = time.perf_counter()
        run_id = tracker.start_run(name, config.model_dump(), {"dvc.stage": "benchmark"})
        training.seed_everything(config.seed)
        model = models.build_model(config.architecture, config.options)
        resume = training.ResumeFile(f"{workdir}/resume.pt", "benchmark")  # saved after every epoch, as in the stage
        result = training.train(model, subset, val_subset, config, torch.device("cpu"), quiet=False, resume=resume,
                                observers=[tracking.EpochLogger(tracker, run_id)])
        save_torch(f"{workdir}/{name}.pt", training.checkpoint(result, config, models.parameter_count(model)))
        tracker.end_run(run_id)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(name, loop: Loop, steps):
    """Run one loop in this process (a fresh one, started by `main` through common.in_fresh_process: the
    loops must not inherit each other's process settings). Returns seconds."""
    torch.set_num_threads(training.thread_count("auto"))
    if loop.process == "tuned":
        process.keep_freed_memory()
        training.seed_everything(0)
    else:
        torch.manual_seed(0)
    config, subset = steps_of(name, load_params(REPO / "params.yaml"), steps)
    return stage_loop(name, config, subset) if loop.stage else bare_loop(name, loop, config, subset)


def best_of_interleaved(name, loops: dict, steps, repeats):
    """Images per second of each loop: the loops take turns, `repeats` rounds, the fastest round counts.
    Prints every measurement as it is made."""
    seconds = {label: float("inf") for label in loops}
    images = steps * train_config(load_params(REPO / "params.yaml"), name).batch_size
    for round_number in range(1, repeats + 1):
        for label, loop in loops.items():
            measured = in_fresh_process(REPO / "benchmarks/training_speed.py", "--model", name, "--steps",
                                        str(steps), "--loop-json", json.dumps(asdict(loop)))["seconds"]
            seconds[label] = min(seconds[label], measured)
            say(f"  {name} round {round_number}: {label:55} {images / measured:8.1f} img/s")
    return {label: images / value for label, value in seconds.items()}


@exit_on_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["resnet", "cnn"], help="models of params.yaml's models")
    parser.add_argument("--resnet-steps", type=int, default=600, help="ResNet18 training steps per measurement")
    parser.add_argument("--cnn-steps", type=int, default=450, help="CNN training steps (one epoch of 45k)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of interleaved loops; the best counts")
    parser.add_argument("--loop", choices=sorted(LOOPS), help="measure one loop (in this process) and exit")
    parser.add_argument("--loop-json", help=argparse.SUPPRESS)  # a Loop, from best_of_interleaved
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if args.loop or args.loop_json:
        loop = LOOPS[args.loop] if args.loop else Loop(**json.loads(args.loop_json))
        print(json.dumps({"seconds": measure(args.model[0], loop, args.steps)}))
        return

    params = load_params(REPO / "params.yaml")
    for name in args.model:
        config = train_config(params, name)
        steps = args.resnet_steps if name == "resnet" else args.cnn_steps
        say(f"{name}: {steps} steps of batch {config.batch_size}, plain / bare / stage loops, best of {args.repeats}")
        speed = best_of_interleaved(name, LOOPS, steps, args.repeats)
        row = {"batch_size": config.batch_size, "steps": steps, "repeats": args.repeats,
               "plain_images_per_s": speed["plain"], "bare_images_per_s": speed["bare"],
               "stage_images_per_s": speed["stage"], "stage_over_plain": speed["stage"] / speed["plain"],
               "stage_over_bare": speed["stage"] / speed["bare"],
               "memory_format": "channels_last" if config.channels_last else "contiguous"}
        record("training_speed", name, row)
        say(f"{name}: stage/plain {row['stage_over_plain']:.2f}, stage/bare {row['stage_over_bare']:.3f}")


if __name__ == "__main__":
    main()
