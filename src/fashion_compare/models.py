"""The two contenders: torchvision's ResNet18 for 1-channel input, and the reference experiment's small
CNN. Plain PyTorch modules; the CPU training speed-ups for ResNet18 are in cpu_speedups.py."""

from torch import nn
from torchvision.models import resnet18

from . import NUM_CLASSES

IMAGE_SHAPE = (1, 28, 28)  # channels, height, width


def resnet18_grey(num_classes=NUM_CLASSES) -> nn.Module:
    """torchvision's ResNet18 with conv1 taking one channel (same kernel, stride and padding)."""
    model = resnet18(num_classes=num_classes)
    old = model.conv1
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


MODEL_BUILDERS = {"resnet": resnet18_grey, "cnn": FashionCNN}


def build_model(name: str) -> nn.Module:
    return MODEL_BUILDERS[name]()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
