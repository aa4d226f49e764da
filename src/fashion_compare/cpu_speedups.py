"""ResNet18's fast path for training on a CPU, exact to rounding: `prepare_for_cpu_training(model)`.

At 28x28 input, ResNet18's layer4 maps are 1x1, so its convolutions have a single output position and
most of their 3x3 kernel taps fall on the zero padding. oneDNN computes every tap anyway and spent half
of a CPU training step there. Here those convolutions are matrix products over the taps that meet data
(SmallMapConv2d), and Adam updates only those live taps. The model keeps torchvision's structure and
state_dict throughout; `to_stock` gives back plain nn.Conv2d modules (what MLflow stores).
Elsewhere (larger maps, CUDA) SmallMapConv2d is nn.Conv2d unchanged; training.train calls
prepare_for_cpu_training only on the CPU.
"""

import functools
import itertools
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .models import IMAGE_SHAPE


class KernelWindow(NamedTuple):
    """Where the kernel of a convolution with a single output position meets its input: input rows
    [0, rows) and columns [0, cols), and `taps`, a 0/1 matrix (window pixels x kernel taps) that says
    which tap meets which pixel; None when the window is the whole kernel (no tap on the padding)."""
    rows: int
    cols: int
    taps: torch.Tensor | None


@functools.cache
def kernel_window(height, width, kernel_size, stride, padding) -> KernelWindow | None:
    """The KernelWindow of a convolution on a height x width map, or None if it has several output positions."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    if ((height + 2 * ph - kh) // sh, (width + 2 * pw - kw) // sw) != (0, 0):
        return None
    rows, cols = min(height, kh - ph), min(width, kw - pw)  # the window starts at (-ph, -pw)
    if rows <= 0 or cols <= 0:  # the kernel meets only padding: leave that to nn.Conv2d
        return None
    if (rows, cols, ph, pw) == (kh, kw, 0, 0):
        return KernelWindow(rows, cols, None)
    taps = torch.zeros(rows * cols, kh * kw)
    for row, col in itertools.product(range(rows), range(cols)):
        taps[row * cols + col, (row + ph) * kw + (col + pw)] = 1.0
    return KernelWindow(rows, cols, taps)


class SmallMapConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state_dict) that computes a convolution with a single output
    position, on the CPU, as the matrix product it is.

    At 28x28 input, ResNet18's layer4 maps are 1x1: each of its convolutions (3x3 with stride 2 and
    the 1x1 shortcut on layer3's 2x2 map, then 3x3 with padding 1 on 1x1 maps) has one output
    position, and most 3x3 taps fall on the zero padding (five of nine, then eight of nine). The output
    is the input window times the taps that meet it: one GEMM, the taps picked from the weight by a GEMM
    with a 0/1 matrix. oneDNN computes every tap and spent half of a CPU training step in these
    layers' backward pass. Elsewhere (larger maps, other devices) this is nn.Conv2d unchanged.

    For training, `split_live_taps` goes further: the taps that never meet data get a zero gradient at
    every step, so Adam never changes them, and only the live taps need a gradient and an update.
    """

    live_taps = None  # after split_live_taps: {(row, col) of the window: the (out, in) weights of its tap}

    def _kernel_window(self, x):
        if (x.device.type != "cpu" or x.dim() != 4 or isinstance(self.padding, str) or self.groups != 1
                or self.dilation != (1, 1) or self.padding_mode != "zeros"):
            return None
        return kernel_window(x.shape[-2], x.shape[-1], self.kernel_size, self.stride, self.padding)

    def forward(self, x):
        window = self._kernel_window(x)
        if self.live_taps is not None:
            return self._forward_live_taps(x, window)
        if window is None:
            return super().forward(x)
        if window.taps is None:
            weight = self.weight.flatten(1)
        else:  # (out, in, kh*kw) x (kh*kw, pixels) -> (out, in * pixels), in the window's layout
            weight = (self.weight.flatten(2) @ window.taps.to(self.weight.dtype).t()).flatten(1)
        pixels = x[:, :, :window.rows, :window.cols].flatten(1)
        return F.linear(pixels, weight, self.bias).view(len(x), self.out_channels, 1, 1)

    def _forward_live_taps(self, x, window):
        if window is None or {(row, col) for row in range(window.rows) for col in range(window.cols)} \
                != set(self.live_taps):
            raise RuntimeError(f"{self}: its live taps were split for another input size than {tuple(x.shape)}")
        out = 0
        for (row, col), taps in self.live_taps.items():
            out = out + x[:, :, row, col] @ taps.t()
        if self.bias is not None:
            out = out + self.bias
        return out.view(len(x), self.out_channels, 1, 1)

    def split_live_taps(self, window: KernelWindow) -> list[torch.Tensor]:
        """The taps that meet data in `window`, each an (out, in) tensor that shares memory with the
        weight, for the optimizer to update instead of the weight.

        The weight is stored taps first, (kh, kw, out, in) in memory (still an (out, in, kh, kw)
        tensor to everything else), so that each tap is one contiguous block, as fused Adam needs.
        Exact: a tap that meets only padding has a zero gradient at every step, and Adam leaves a
        parameter whose gradient was always zero exactly as it was (its moments stay zero).
        """
        (ph, pw) = self.padding
        taps_first = self.weight.detach().permute(2, 3, 0, 1).contiguous()
        self.weight.data = taps_first.permute(2, 3, 0, 1)
        self.live_taps = {(row, col): taps_first[row + ph, col + pw].requires_grad_()
                          for row, col in itertools.product(range(window.rows), range(window.cols))}
        return list(self.live_taps.values())


def use_small_map_convolutions(model: nn.Module) -> nn.Module:
    """Make every plain nn.Conv2d of `model` a SmallMapConv2d, in place (parameters and state_dict
    untouched): the same model, whose single-output convolutions run as matrix products on a CPU."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = SmallMapConv2d
    return model


def to_stock(model: nn.Module) -> nn.Module:
    """The inverse: plain nn.Conv2d again, with contiguous weights (what MLflow pickles, so loading needs
    only torchvision)."""
    for module in model.modules():
        if type(module) is SmallMapConv2d:
            if module.live_taps is not None:
                module.weight.data = module.weight.data.contiguous()
                del module.live_taps
            module.__class__ = nn.Conv2d
    return model


def prepare_for_cpu_training(model: nn.Module, image_shape=IMAGE_SHAPE) -> list[torch.Tensor]:
    """Prepare `model` (already on the CPU, in its memory format) for fast CPU training, in place, and
    return what the optimizer should update.

    Every nn.Conv2d becomes a SmallMapConv2d; one whose kernel has taps that never meet data at this
    image size hands over only its live taps (SmallMapConv2d.split_live_taps), the others their
    parameters. For ResNet18 at 28x28 that leaves 4.2M of 11.2M numbers to update, with the same
    result; for the CNN (no single-output convolution) it changes nothing. Calling it again returns the
    same tensors. `to_stock` undoes it."""
    use_small_map_convolutions(model)
    small_map_convs = [module for module in model.modules() if isinstance(module, SmallMapConv2d)]
    windows = {}

    def record_window(conv, args):
        windows[conv] = conv._kernel_window(args[0])

    hooks = [conv.register_forward_pre_hook(record_window) for conv in small_map_convs]
    was_training = model.training
    parameter = next(model.parameters())
    try:
        with torch.no_grad():  # a dry run in eval mode (batch norm statistics untouched) finds each map's size
            model.eval()(torch.zeros(1, *image_shape, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    live_taps = {}
    for conv in small_map_convs:
        window = windows.get(conv)
        if conv.live_taps is not None:
            live_taps[id(conv.weight)] = list(conv.live_taps.values())
        elif window is not None and window.taps is not None:
            live_taps[id(conv.weight)] = conv.split_live_taps(window)
    return [tensor for parameter in model.parameters() for tensor in live_taps.get(id(parameter), [parameter])]
