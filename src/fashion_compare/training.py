"""One training loop for both models: seeded batches straight from tensors, Adam, optional StepLR."""

import contextlib
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .params import TrainConfig


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ParamsError

        raise ParamsError("device: 'cuda' requested but no CUDA GPU is available (use 'auto' or 'cpu')")
    return torch.device(name)


def seed_everything(seed: int):
    """Seed every RNG we use and ask for deterministic kernels (CPU results repeat exactly)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    epochs: list = field(default_factory=list)  # EpochRecord per epoch
    steps: list = field(default_factory=list)  # (global step, epoch, train loss) per iteration
    best_state: dict = None
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    train_seconds: float = 0.0
    observer_seconds: float = 0.0  # time spent in observers (e.g. MLflow logging)

    def epoch_rows(self, model_name):
        return [{"model": model_name, **asdict(record)} for record in self.epochs]

    def step_rows(self, model_name):
        return [{"model": model_name, "step": step, "epoch": epoch, "train_loss": loss}
                for step, epoch, loss in self.steps]


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


def train(model: nn.Module, train_set: dict, val_set: dict, config: TrainConfig,
          observers=(), eval_batch_size=1000, quiet=None) -> TrainResult:
    """Train `model`; keep the state with the best validation accuracy.

    `observers` get `on_epoch(record, steps)` after every epoch with that epoch's
    (global step, epoch, loss) tuples, so loggers can send them in one batch.
    `quiet=None` shows progress bars only on a terminal.
    """
    device = select_device(config.device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    images, labels = train_set["images"].to(device), train_set["labels"].to(device)
    val_images, val_labels = val_set["images"].to(device), val_set["labels"].to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
                 if config.step_size else None)
    loss_fn = nn.CrossEntropyLoss()
    use_amp = config.mixed_precision and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    generator = torch.Generator().manual_seed(config.seed)

    result = TrainResult()
    global_step = 0
    started = time.perf_counter()
    epoch_bar = tqdm(range(1, config.epochs + 1), desc=config.model, unit="epoch", disable=quiet)
    for epoch in epoch_bar:
        epoch_started = time.perf_counter()
        model.train()
        batches = shuffled_batches(len(labels), config.batch_size, generator)
        step_losses, correct = [], torch.zeros((), device=device, dtype=torch.long)
        step_bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=quiet)
        for index in step_bar:
            index = index.to(device, non_blocking=True)
            x, y = images[index].contiguous(memory_format=memory_format), labels[index]
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                logits = model(x)
                loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            step_losses.append(loss.detach())
            correct += (logits.argmax(dim=1) == y).sum()
            if len(step_losses) % 50 == 0 and not step_bar.disable:
                step_bar.set_postfix(loss=f"{loss.item():.4f}")
        losses = torch.stack(step_losses).float().cpu().tolist()
        val_loss, val_accuracy = loss_and_accuracy(model, val_images, val_labels, eval_batch_size, device,
                                                   memory_format)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler:
            scheduler.step()
        record = EpochRecord(epoch=epoch, train_loss=sum(losses) / len(losses),
                             train_accuracy=correct.item() / len(labels), val_loss=val_loss,
                             val_accuracy=val_accuracy, lr=lr, seconds=time.perf_counter() - epoch_started)
        steps = [(global_step + i + 1, epoch, loss) for i, loss in enumerate(losses)]
        global_step += len(losses)
        result.epochs.append(record)
        result.steps.extend(steps)
        if val_accuracy > result.best_val_accuracy or result.best_state is None:
            result.best_state = {k: v.detach().to("cpu", copy=True).contiguous()
                                 for k, v in model.state_dict().items()}
            result.best_epoch, result.best_val_accuracy = epoch, val_accuracy
        observer_started = time.perf_counter()
        for observer in observers:
            observer.on_epoch(record, steps)
        result.observer_seconds += time.perf_counter() - observer_started
        epoch_bar.set_postfix(loss=f"{record.train_loss:.4f}", val_acc=f"{val_accuracy:.4f}")
    result.train_seconds = time.perf_counter() - started
    return result


def checkpoint(result: TrainResult, config: TrainConfig, parameter_count: int) -> dict:
    """What models/<model>.pt holds: the best state and the config that made it (weights_only-safe)."""
    return {"state_dict": result.best_state, "config": config.model_dump(), "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy, "parameter_count": parameter_count}


def load_checkpoint(path, map_location="cpu"):
    from .errors import DataError
    from .models import build_model

    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: checkpoint not found; run its train stage first") from None
    model = build_model(saved["config"]["model"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved
