"""The architectures a model in params.yaml can name, each a builder with its options, and nothing else:
params.yaml's `models:` says which model is which architecture with which options and recipe, so that a new
model is a params entry, and a new architecture a builder here.

- `resnet18`: torchvision's ResNet18 for 1-channel input and 10 classes; its `stem` is `imagenet` (torchvision's:
  a 7x7 stride-2 convolution and a stride-2 max-pool, 28x28 down to 7x7 before the first residual block) or
  `small` (a 3x3 stride-1 convolution and no max-pool, the first residual block at 28x28).
- `fashion_cnn`: the reference experiment's small CNN.

load_checkpoint reads a model back from a checkpoint the train stage wrote. Plain PyTorch modules; the CPU
training speed-ups for ResNet18 are in cpu_speedups.py.
"""

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torchvision.models import resnet18

from . import NUM_CLASSES
from .errors import DataError, first_line

IMAGE_SHAPE = (1, 28, 28)  # channels, height, width

# What params.yaml compared before models were data (no `compare.baseline`): a seed folder collected then.
LEGACY_BASELINE, LEGACY_CONTENDERS = "cnn", ("resnet",)


class Options(BaseModel):
    """An architecture's options in params.yaml (`models.<name>.options`): every key known, strictly typed."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ResNet18Options(Options):
    stem: Literal["imagenet", "small"] = "imagenet"


class NoOptions(Options):
    pass


def resnet18_grey(num_classes=NUM_CLASSES, stem="imagenet") -> nn.Module:
    """torchvision's ResNet18 with conv1 taking one channel: with the `imagenet` stem the same kernel, stride and
    padding as torchvision's; with the `small` stem a 3x3 stride-1 convolution (padding 1) and no max-pool."""
    model = resnet18(num_classes=num_classes)
    old = model.conv1
    if stem == "small":
        model.conv1 = nn.Conv2d(1, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(1, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                                padding=old.padding, bias=old.bias is not None)
    return model


class FashionCNN(nn.Module):
    """Two conv blocks (28->28->14, 14->12->6; 32 then 64 channels), then three Linear layers.

    Exactly as the reference experiment has it: one Dropout(0.25) after the first Linear layer,
    and no activation between the Linear layers.
    """

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(32, 64, kernel_size=3, padding=0),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 6 * 6, 600),
            nn.Dropout(p=0.25),
            nn.Linear(600, 120),
            nn.Linear(120, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


# architecture name -> (its builder, its options)
ARCHITECTURES = {"resnet18": (resnet18_grey, ResNet18Options), "fashion_cnn": (FashionCNN, NoOptions)}


def architecture_options(architecture: str, options: dict) -> dict:
    """`options` validated against the architecture's, every default spelled out; a ValueError in one line."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{architecture}' (one of {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[architecture][1].model_validate(options).model_dump()


def build_model(architecture: str, options: dict | None = None) -> nn.Module:
    builder, schema = ARCHITECTURES[architecture]
    return builder(**schema.model_validate(options or {}).model_dump())


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_checkpoint(path, map_location="cpu", expected_model=None):
    """The model in a checkpoint written by `checkpoint`, in eval mode, and the checkpoint's contents."""
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: checkpoint not found; run its train stage first") from None
    except Exception as error:  # truncated, not a torch file, or refused by the weights_only loader
        raise DataError(f"{path}: not a readable checkpoint ({first_line(error, 160)}); "
                        "rerun its train stage") from None
    if not isinstance(saved, dict) or not {"state_dict", "config"} <= set(saved) or \
            saved["config"].get("architecture") not in ARCHITECTURES:
        raise DataError(f"{path}: not a checkpoint of this project (no state_dict and config); "
                        "rerun its train stage")
    if expected_model is not None and saved["config"]["model"] != expected_model:
        raise DataError(f"{path}: holds a '{saved['config']['model']}' model, expected '{expected_model}'; "
                        "rerun its train stage")
    model = build_model(saved["config"]["architecture"], saved["config"]["options"])
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as error:
        raise DataError(f"{path}: weights do not fit the model ({first_line(error, 160)}); "
                        "rerun its train stage") from None
    return model.eval(), saved
