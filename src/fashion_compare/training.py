"""One training loop for every model: seeded batches straight from tensors, Adam, AdamW or SGD with Nesterov
momentum, a constant, step, cosine or one-cycle learning rate, optional augmentation of the training batches,
label smoothing, and bfloat16 autocast where the recipe asks for it (`precision: bf16`).

Training can be interrupted at any point and resumed: after every epoch the loop saves, atomically,
everything it needs to go on (model, optimizer, scheduler, every RNG, the records so far, the best
state). A resumed run ends with the same weights, bit for bit, as one that was never interrupted.
"""

import contextlib
import hashlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .cpu_speedups import prepare_for_cpu_training
from .errors import ParamsError, TrainingDiverged
from .files import atomic_path
from .params import TrainConfig
from .process import available_cores
from .recipes import augment_batch, autocast, make_optimizer, make_scheduler

RESUME_FORMAT = 1
# Cross-entropy over 10 classes starts near ln(10) = 2.3; a loss this large (or NaN/inf) means the
# weights have blown up, and every later step only computes garbage.
DIVERGED_LOSS = 1e4
AUGMENT_SEED_OFFSET = 1_000_003  # the augmentation's generator: its own stream, apart from the batch order


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("device: 'cuda' requested but no CUDA GPU is available (use 'auto' or 'cpu')")
    return torch.device(name)


def thread_count(setting="auto") -> int:
    """Intra-op threads for this process: `threads` from params.yaml, or with `auto` OMP_NUM_THREADS
    when set (e.g. `OMP_NUM_THREADS=1 dvc queue start -j 2`), else the cores this process may use."""
    if setting != "auto":
        return int(setting)
    with contextlib.suppress(ValueError):
        if int(os.environ.get("OMP_NUM_THREADS", "")) > 0:
            return int(os.environ["OMP_NUM_THREADS"])
    return available_cores()


def seed_everything(seed: int):
    """Seed every RNG we use and ask for deterministic kernels (CPU results repeat exactly)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new uninitialized tensor with NaN, a debugging aid that
    # changes no result (kernels write all of their outputs) and costs a write of each buffer.
    torch.utils.deterministic.fill_uninitialized_memory = False


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


EPOCH_FIELDS = ["model", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
STEP_FIELDS = ["model", "step", "epoch", "train_loss"]


@dataclass
class TrainResult:
    """What a run has produced so far. RESUMED lists what a resume state keeps of it."""

    epochs: list = field(default_factory=list)  # EpochRecord per epoch
    steps: list = field(default_factory=list)  # (global step, epoch, train loss) per iteration
    best_state: dict = None
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0  # CPU time of this process while it trained (all its threads)
    observer_seconds: float = 0.0  # time spent in observers (e.g. MLflow logging)
    resumed_from_epoch: int = 0  # 0: trained from the start

    RESUMED = ("epochs", "steps", "best_state", "best_epoch", "best_val_accuracy", "train_seconds",
               "train_cpu_seconds")

    def add_epoch(self, record: EpochRecord, losses: list, model: nn.Module) -> list:
        """Record an epoch (and the model's state if it is the best so far); returns its step tuples."""
        first_step = len(self.steps) + 1
        steps = [(first_step + i, record.epoch, loss) for i, loss in enumerate(losses)]
        self.epochs.append(record)
        self.steps.extend(steps)
        if record.val_accuracy > self.best_val_accuracy or self.best_state is None:
            self.best_state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
            self.best_epoch, self.best_val_accuracy = record.epoch, record.val_accuracy
        return steps

    def epoch_rows(self, model_name):  # plots/train/<model>_epochs.csv, columns EPOCH_FIELDS
        return [{"model": model_name, **asdict(record)} for record in self.epochs]

    def step_rows(self, model_name):  # plots/train/<model>_steps.csv, columns STEP_FIELDS
        return [{"model": model_name, "step": step, "epoch": epoch, "train_loss": loss}
                for step, epoch, loss in self.steps]


@dataclass
class TrainingState:
    """Everything a run needs to go on after an interruption: model, optimizer, scheduler, the RNGs
    (batch order among them) and the result so far. It saves and restores itself (state_dict)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    batch_generator: torch.Generator
    augment_generator: torch.Generator | None = None  # None: no augmentation
    result: TrainResult = field(default_factory=TrainResult)

    @classmethod
    def start(cls, model: nn.Module, parameters, config: TrainConfig, device: torch.device,
              steps_per_epoch: int) -> "TrainingState":
        """A fresh state; the optimizer updates `parameters` (those of `model`, or the part of them
        cpu_speedups.prepare_for_cpu_training hands over)."""
        optimizer = make_optimizer(parameters, config, device)
        augment_generator = (torch.Generator().manual_seed(config.seed + AUGMENT_SEED_OFFSET)
                             if config.augment != "none" else None)
        return cls(model, optimizer, make_scheduler(optimizer, config, steps_per_epoch),
                   torch.Generator().manual_seed(config.seed), augment_generator)

    @property
    def steps_each_batch(self) -> bool:
        """The one-cycle schedule moves the learning rate after every batch; the others after every epoch."""
        return isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR)

    def state_dict(self) -> dict:
        saved = {name: getattr(self.result, name) for name in TrainResult.RESUMED}
        saved["epochs"] = [asdict(record) for record in self.result.epochs]
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "rng": _rng_states(self.batch_generator, self.augment_generator), **saved}

    def load_state_dict(self, saved: dict):
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(saved["scheduler"])
        _restore_rng_states(saved["rng"], self.batch_generator, self.augment_generator)
        for name in TrainResult.RESUMED:
            setattr(self.result, name, saved[name])
        self.result.epochs = [EpochRecord(**record) for record in saved["epochs"]]
        self.result.steps = [tuple(step) for step in saved["steps"]]
        self.result.resumed_from_epoch = len(self.result.epochs)


class ResumeFile:
    """Where a training run keeps its state between epochs (a git-ignored path outside DVC's outputs,
    so it survives DVC removing the outputs before a rerun), and what makes a saved state usable:
    the same fingerprint (config, data, code, torch version)."""

    def __init__(self, path, fingerprint: str, metadata=None):
        self.path, self.fingerprint = Path(path), fingerprint
        self.metadata = dict(metadata or {})  # saved with every state (e.g. the MLflow run id)

    def load(self):
        """The saved state, or None (no state, or one from another config: then says why)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a state cut short by a crash is no reason to stop: start over
            print(f"starting over: resume state {self.path} is unreadable ({type(error).__name__})")
            return None
        if state.get("format") != RESUME_FORMAT or state.get("fingerprint") != self.fingerprint:
            print(f"starting over: {self.path} was saved by another configuration, data or code")
            return None
        return state

    def save(self, state: dict):
        """Atomically, straight to the file (a resume state need not be byte-stable, see files.save_torch)."""
        with atomic_path(self.path) as tmp:
            torch.save({"format": RESUME_FORMAT, "fingerprint": self.fingerprint, **self.metadata, **state}, tmp)

    def remove(self):
        self.path.unlink(missing_ok=True)


def fingerprint(config: TrainConfig, train_set: dict, val_set: dict) -> str:
    """What must match for a saved state to be resumed: config, data, this code, torch."""
    digest = hashlib.sha256(repr(sorted(config.model_dump().items())).encode())
    for tensors in (train_set, val_set):
        for key in ("images", "labels"):
            digest.update(tensors[key].numpy().tobytes())
    for module in ("training.py", "models.py", "cpu_speedups.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()


def shuffled_batches(size: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(size, generator=generator)
    return order.split(batch_size)


@torch.inference_mode()
def loss_and_accuracy(model, images, labels, batch_size, device, memory_format=torch.contiguous_format):
    """Mean cross-entropy and accuracy of `model` (in eval mode) over a whole split."""
    model.eval()
    total_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = labels[start:start + batch_size].to(device, non_blocking=True)
        logits = model(x)
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
    return total_loss.item() / len(labels), correct.item() / len(labels)


def _rng_states(generator, augment_generator=None):
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "batches": generator.get_state(), "python": random.getstate(),
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "augment": augment_generator.get_state() if augment_generator is not None else None}


def _restore_rng_states(states, generator, augment_generator=None):
    torch.set_rng_state(states["torch"])
    generator.set_state(states["batches"])
    if augment_generator is not None:
        augment_generator.set_state(states["augment"])
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _check_finite(loss: float, config: TrainConfig, where: str, limit=DIVERGED_LOSS):
    if not math.isfinite(loss) or loss > limit:
        raise TrainingDiverged(f"{config.model}: {where} (lr {config.lr:g}): training diverged; try a lower lr")


def train_one_epoch(state: TrainingState, images, labels, config: TrainConfig, epoch: int, memory_format,
                    quiet=None):
    """One pass over the training set in a seeded random order. Returns the per-step losses and the
    training accuracy; stops at the first step whose loss is not finite (or huge)."""
    model, optimizer, device = state.model, state.optimizer, images.device
    model.train()
    batches = shuffled_batches(len(labels), config.batch_size, state.batch_generator)
    step_losses, correct = [], torch.zeros((), device=device, dtype=torch.long)
    step_bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=quiet)
    for index in step_bar:
        index = index.to(device, non_blocking=True)
        x, y = images[index], labels[index]
        if state.augment_generator is not None:
            x = augment_batch(x, config.augment, state.augment_generator)
        x = x.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with autocast(config, device):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        _check_finite(loss.item(), config, f"training loss is {loss.item()} at epoch {epoch}, step "
                                           f"{len(state.result.steps) + len(step_losses) + 1}")
        loss.backward()
        optimizer.step()
        if state.steps_each_batch:
            state.scheduler.step()
        step_losses.append(loss.detach())
        correct += (logits.argmax(dim=1) == y).sum()
        if len(step_losses) % 50 == 0 and not step_bar.disable:
            step_bar.set_postfix(loss=f"{loss.item():.4f}")
    return torch.stack(step_losses).float().cpu().tolist(), correct.item() / len(labels)


def train(model: nn.Module, train_set: dict, val_set: dict, config: TrainConfig, device: torch.device,
          observers=(), quiet=None, resume: ResumeFile = None, state=None, until_epoch=None) -> TrainResult:
    """Train `model` on `device` (select_device(config.device)); keep the state with the best validation
    accuracy.

    On a CPU the model is first prepared for fast training (cpu_speedups.prepare_for_cpu_training: ResNet18's
    single-output convolutions as matrix products, Adam over their live kernel taps only); on CUDA it trains
    as built.

    `observers` get `on_epoch(record, steps)` after every epoch with that epoch's (global step, epoch,
    loss) tuples; on a resumed run, `on_resume(records, steps)` first, with what earlier attempts trained.
    `resume`: where to save the state after every epoch; `state`: a state loaded from it, to go on from.
    `quiet=None` shows progress bars only on a terminal. `until_epoch`: stop after that epoch (a rung of a
    search), on the schedule of all of config.epochs; a later call with the saved state goes on from there.
    """
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    images, labels = train_set["images"].to(device), train_set["labels"].to(device)
    validation = (val_set["images"].to(device), val_set["labels"].to(device))
    parameters = prepare_for_cpu_training(model) if device.type == "cpu" else list(model.parameters())
    training = TrainingState.start(model, parameters, config, device, math.ceil(len(labels) / config.batch_size))
    result = training.result
    if state is not None:
        _go_on_from(training, state, config, observers)

    started = time.perf_counter() - result.train_seconds
    cpu_started = time.process_time() - result.train_cpu_seconds
    last_epoch = min(config.epochs, until_epoch or config.epochs)
    epoch_bar = tqdm(range(result.resumed_from_epoch + 1, last_epoch + 1), desc=config.model, unit="epoch",
                     disable=quiet, initial=result.resumed_from_epoch, total=config.epochs)
    for epoch in epoch_bar:
        record, steps = _train_and_validate(training, images, labels, validation, config, epoch, memory_format,
                                            quiet)
        result.train_seconds = time.perf_counter() - started
        result.train_cpu_seconds = time.process_time() - cpu_started
        if resume is not None:
            resume.save(training.state_dict())
        observer_started = time.perf_counter()
        for observer in observers:
            observer.on_epoch(record, steps)
        result.observer_seconds += time.perf_counter() - observer_started
        epoch_bar.set_postfix(loss=f"{record.train_loss:.4f}", val_acc=f"{record.val_accuracy:.4f}")
    result.train_seconds = time.perf_counter() - started
    result.train_cpu_seconds = time.process_time() - cpu_started
    return result


def _go_on_from(training: TrainingState, state: dict, config: TrainConfig, observers):
    """Restore a saved state and tell the observers what earlier attempts trained."""
    training.load_state_dict(state)
    result = training.result
    print(f"{config.model}: resuming from epoch {result.resumed_from_epoch + 1} "
          f"({result.resumed_from_epoch} of {config.epochs} done)")
    for observer in observers:
        if hasattr(observer, "on_resume"):
            observer.on_resume(result.epochs, result.steps)


def _train_and_validate(training: TrainingState, images, labels, validation, config: TrainConfig, epoch: int,
                        memory_format, quiet):
    """One epoch: train, validate, step the schedule, record it. Returns its EpochRecord and step tuples."""
    epoch_started = time.perf_counter()
    losses, train_accuracy = train_one_epoch(training, images, labels, config, epoch, memory_format, quiet)
    val_loss, val_accuracy = loss_and_accuracy(training.model, *validation, config.eval_batch_size,
                                               images.device, memory_format)
    # A huge validation loss alone is no divergence: early on, BatchNorm's running statistics can lag far behind
    # a fast-moving network (high-lr SGD) while its training loss is fine; only a non-finite one stops the run.
    _check_finite(val_loss, config, f"validation loss is {val_loss} after epoch {epoch}", limit=math.inf)
    lr = training.optimizer.param_groups[0]["lr"]
    if training.scheduler and not training.steps_each_batch:
        training.scheduler.step()
    record = EpochRecord(epoch=epoch, train_loss=sum(losses) / len(losses), train_accuracy=train_accuracy,
                         val_loss=val_loss, val_accuracy=val_accuracy, lr=lr,
                         seconds=time.perf_counter() - epoch_started)
    return record, training.result.add_epoch(record, losses, training.model)


def summary(result: TrainResult, config: TrainConfig, parameter_count: int, device: torch.device) -> dict:
    """What metrics/train/<model>.json holds of a finished run."""
    return {"model": config.model, "parameter_count": parameter_count, "epochs": config.epochs,
            "precision": config.precision,
            "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
            "final_val_accuracy": result.epochs[-1].val_accuracy, "final_train_loss": result.epochs[-1].train_loss,
            "train_seconds": result.train_seconds, "train_cpu_seconds": result.train_cpu_seconds,
            "resumed_from_epoch": result.resumed_from_epoch,
            "threads": torch.get_num_threads(), "device": str(device)}


def checkpoint(result: TrainResult, config: TrainConfig, parameter_count: int) -> dict:
    """What models/<model>.pt holds: the best state and the config that made its weights (weights_only-safe;
    the validation batch size is left out: it changes no weight)."""
    return {"state_dict": result.best_state, "config": config.model_dump(exclude={"eval_batch_size"}),
            "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy, "parameter_count": parameter_count}
