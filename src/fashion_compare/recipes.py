"""The parts of a recipe (params.RecipeParams) the training loop is built from: the optimizer, the learning-rate
schedule, the precision (bf16 autocast) and the augmentation of the training batches."""

import contextlib
import math

import torch
from torch import nn

from .params import TrainConfig

SGD_MOMENTUM = 0.9  # the recipe's `optimizer: sgd`, with Nesterov momentum
# Augmentation (params.Augment): the largest shift, in pixels, and rotation, in degrees, drawn per image.
MAX_SHIFT_PIXELS = 2
MAX_ROTATION_DEGREES = 10.0
# Random erasing (Zhong et al. 2020, torchvision's RandomErasing defaults): with probability 1/2 per image, a
# rectangle of 2-33 % of the image, aspect ratio 0.3-3.3 (log-uniform), set to 0.
ERASE_PROBABILITY, ERASE_AREA, ERASE_RATIO = 0.5, (0.02, 0.33), (0.3, 3.3)


def make_optimizer(parameters, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimizer over `parameters` (on `device`): Adam, AdamW (decoupled weight decay) or SGD with
    Nesterov momentum (L2 weight decay); the fused kernel (one pass over all of them) where PyTorch has one for
    the device."""
    fused = device.type in ("cpu", "cuda")
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=SGD_MOMENTUM, nesterov=True,
                               weight_decay=config.weight_decay, fused=fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    return torch.optim.Adam(parameters, lr=config.lr, fused=fused)


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """The learning rate over the recipe's epochs: StepLR or cosine annealing to 0 (stepped after each epoch),
    one-cycle (stepped after each batch: warm-up to the recipe's lr, then annealing), or None for a constant
    rate. A run stopped early (train's `until_epoch`) follows the same schedule as far as it went."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, epochs=config.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    return None


def autocast(config: TrainConfig, device: torch.device):
    """bfloat16 autocast on the device when the recipe says `precision: bf16`; else nothing."""
    if config.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def augment_batch(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """A training batch (N, 1, H, W) augmented per image, as params.Augment names: a horizontal flip with
    probability 1/2; with translate, a shift of up to MAX_SHIFT_PIXELS whole pixels each way; with rotate, a
    rotation of up to MAX_ROTATION_DEGREES (bilinear, zeros outside); with erase, random erasing after the
    shift. The draws come from `generator` (on the CPU, so that they repeat on any device); one affine
    resampling of the batch does the geometry."""
    count, height, width = len(images), images.shape[-2], images.shape[-1]
    flip = torch.rand(count, generator=generator) < 0.5
    if kind == "flip":
        return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)
    shifts = torch.randint(-MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS + 1, (count, 2), generator=generator)
    angles = torch.zeros(count)
    if kind == "flip_translate_rotate":
        angles = (torch.rand(count, generator=generator) * 2 - 1) * math.radians(MAX_ROTATION_DEGREES)
    cos, sin, mirror = angles.cos(), angles.sin(), 1.0 - 2.0 * flip.float()
    # affine_grid maps output to input coordinates in [-1, 1]: one pixel is 2 / size
    theta = torch.stack([torch.stack([cos * mirror, -sin, -shifts[:, 0] * 2.0 / width], dim=1),
                         torch.stack([sin * mirror, cos, -shifts[:, 1] * 2.0 / height], dim=1)], dim=1)
    theta = theta.to(images.device, images.dtype)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    moved = nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if kind == "flip_translate_erase":
        return moved * erase_mask(count, height, width, generator).to(images.device, images.dtype)
    return moved


def erase_mask(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(N, 1, H, W) of ones with one zero rectangle in the images drawn for erasing (ERASE_*; a rectangle
    larger than the image is clipped to it)."""
    erase = torch.rand(count, generator=generator) < ERASE_PROBABILITY
    area = (ERASE_AREA[0] + torch.rand(count, generator=generator) * (ERASE_AREA[1] - ERASE_AREA[0])) * height * width
    log_low, log_high = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    ratio = torch.exp(log_low + torch.rand(count, generator=generator) * (log_high - log_low))
    box_height = (area * ratio).sqrt().round().clamp(1, height).long()
    box_width = (area / ratio).sqrt().round().clamp(1, width).long()
    top = (torch.rand(count, generator=generator) * (height - box_height + 1)).long()
    left = (torch.rand(count, generator=generator) * (width - box_width + 1)).long()
    rows, columns = torch.arange(height)[None, :, None], torch.arange(width)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + box_height)[:, None, None]) &
              (columns >= left[:, None, None]) & (columns < (left + box_width)[:, None, None]))
    return (~(inside & erase[:, None, None])).float()[:, None]
