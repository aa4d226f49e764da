"""The two contenders: torchvision's ResNet18 for 1-channel input, and the design notes' small CNN."""

from torch import nn
from torch.nn import functional as F
from torchvision.models import resnet18

from . import CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES)


class SmallMapConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state_dict) that skips the padding on 1x1 maps on the CPU.

    At 28x28 input, ResNet18's layer4 runs 3x3 convolutions with padding 1 on 1x1 maps: only the
    centre tap of each kernel ever meets data, so the convolution is a matrix product with that tap.
    oneDNN does not see this and spends most of a CPU training step on these layers' backward pass.
    Elsewhere (larger maps, other devices) this is nn.Conv2d unchanged.
    """

    def _centre_tap_applies(self, x):
        kh, kw = self.kernel_size
        return (x.device.type == "cpu" and x.shape[-2:] == (1, 1) and self.stride == (1, 1)
                and self.padding == (kh // 2, kw // 2) and self.groups == 1 and kh % 2 == 1 and kw % 2 == 1
                and self.padding_mode == "zeros")

    def forward(self, x):
        if not self._centre_tap_applies(x):
            return super().forward(x)
        kh, kw = self.kernel_size
        centre = self.weight[:, :, kh // 2, kw // 2]
        return F.linear(x.flatten(1), centre, self.bias).view(len(x), self.out_channels, 1, 1)


def use_small_map_convolutions(model: nn.Module) -> nn.Module:
    """Make every plain nn.Conv2d of `model` a SmallMapConv2d, in place (parameters untouched)."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = SmallMapConv2d
    return model


def to_stock(model: nn.Module) -> nn.Module:
    """The inverse: plain nn.Conv2d again (what MLflow pickles, so loading needs only torchvision)."""
    for module in model.modules():
        if type(module) is SmallMapConv2d:
            module.__class__ = nn.Conv2d
    return model


def resnet18_grey(num_classes=NUM_CLASSES) -> nn.Module:
    """torchvision's ResNet18 with conv1 taking one channel (same kernel, stride and padding).

    Its convolutions are SmallMapConv2d: the same model and state_dict, trained faster on a CPU."""
    model = resnet18(num_classes=num_classes)
    old = model.conv1
    model.conv1 = nn.Conv2d(1, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                            padding=old.padding, bias=old.bias is not None)
    return use_small_map_convolutions(model)


class FashionCNN(nn.Module):
    """Two conv blocks (28->28->14, 14->12->6; 32 then 64 channels), then three Linear layers.

    Exactly as the design notes give it: one Dropout(0.25) after the first Linear layer,
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


MODEL_BUILDERS = {"resnet": resnet18_grey, "cnn": FashionCNN}
MODEL_TITLES = {"resnet": "ResNet18", "cnn": "Small CNN"}


def build_model(name: str) -> nn.Module:
    return MODEL_BUILDERS[name]()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
