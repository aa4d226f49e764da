import functools

import pytest
import torch
from torch import nn

from fashion_compare.cpu_speedups import (
    SmallMapConv2d,
    kernel_window,
    prepare_for_cpu_training,
    to_stock,
    use_small_map_convolutions,
)
from fashion_compare.models import FashionCNN, build_model, parameter_count, resnet18_grey


def fast_resnet18_grey():
    """The project's ResNet18 with its convolutions ready for the CPU speed path (cpu_speedups)."""
    return use_small_map_convolutions(resnet18_grey())


def test_resnet18_takes_one_channel_and_predicts_ten_classes():
    model = resnet18_grey().eval()
    assert model.conv1.in_channels == 1
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert model.fc.out_features == 10
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # torchvision's ResNet18 (11,689,512 for RGB and 1000 classes) less 2x64x49 conv1 weights and the
    # 1000-way head, plus a 10-way head: 11,175,370
    assert parameter_count(model) == 11_175_370


def test_the_small_stem_keeps_28x28_into_the_first_residual_block():
    """ResNet18 with the small-image stem: a 3x3 stride-1 first convolution, no max-pool, torchvision's blocks."""
    model = build_model("resnet18", {"stem": "small"}).eval()
    assert (model.conv1.in_channels, model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == \
        (1, (3, 3), (1, 1), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    seen = {}
    model.layer1.register_forward_hook(lambda module, args, output: seen.update(layer1=output.shape))
    model.layer4.register_forward_hook(lambda module, args, output: seen.update(layer4=output.shape))
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert seen == {"layer1": (2, 64, 28, 28), "layer4": (2, 512, 4, 4)}
    # the ImageNet stem's parameters less its 7x7 conv1 (64 x 49) plus a 3x3 one (64 x 9)
    assert parameter_count(model) == 11_175_370 - 64 * 49 + 64 * 9


def test_an_architectures_options_are_checked():
    from pydantic import ValidationError

    from fashion_compare.models import architecture_options

    assert architecture_options("resnet18", {}) == {"stem": "imagenet"}
    with pytest.raises(ValidationError):
        architecture_options("resnet18", {"stem": "tiny"})
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        architecture_options("vgg", {})


def test_cnn_blocks_have_the_design_notes_shapes():
    model = FashionCNN().eval()
    x = torch.rand(4, 1, 28, 28)
    block_one, block_two = model.features[:4], model.features[4:]
    assert block_one(x).shape == (4, 32, 14, 14)
    assert block_two(block_one(x)).shape == (4, 64, 6, 6)
    assert model(x).shape == (4, 10)
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    dropouts = [m for m in model.classifier if isinstance(m, nn.Dropout)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2304, 600), (600, 120), (120, 10)]
    assert len(dropouts) == 1 and dropouts[0].p == 0.25
    assert parameter_count(model) == 1_475_338


@pytest.mark.parametrize("name", ["resnet18", "fashion_cnn"])
def test_a_built_model_is_initialised_from_torchs_seed(name):
    """The seed drives initialisation: the same seed builds the same weights, another seed others."""
    torch.manual_seed(3)
    first = build_model(name).state_dict()
    torch.manual_seed(3)
    again, other = build_model(name).state_dict(), build_model(name).state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first if first[key].is_floating_point())


# ---------------------------------------------------------------- the small-map convolutions are exact

def stock_resnet18_grey():
    """What a user would write: torchvision's ResNet18, 1-channel conv1, nn.Conv2d everywhere."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 20, 64])
def test_fast_resnet_matches_stock_forward_and_every_gradient(batch, device):
    """Every layer shape ResNet18 has at 28x28 (7x7 down to 1x1 maps), through the whole network.
    Tolerance: float32 sums in another order, |a - b| <= 1e-4 + 1e-4 |b| (observed ~1e-6)."""
    torch.manual_seed(batch)
    fast = fast_resnet18_grey().to(device)
    stock = stock_resnet18_grey().to(device)
    assert list(fast.state_dict()) == list(stock.state_dict())
    stock.load_state_dict(fast.state_dict())
    assert any(isinstance(m, SmallMapConv2d) for m in fast.modules())
    assert not any(isinstance(m, SmallMapConv2d) for m in stock.modules())
    mode = "train" if batch > 1 else "eval"  # batch norm cannot train on one 1x1 value per channel
    for model in (fast, stock):
        getattr(model, mode)()
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    outputs = {}
    for name, model in (("fast", fast), ("stock", stock)):
        logits = model(x)
        nn.functional.cross_entropy(logits, y).backward()
        outputs[name] = logits.detach()
    torch.testing.assert_close(outputs["fast"], outputs["stock"], rtol=1e-4, atol=1e-4)
    stock_params = dict(stock.named_parameters())
    for name, parameter in fast.named_parameters():
        torch.testing.assert_close(parameter.grad, stock_params[name].grad, rtol=1e-4, atol=1e-4, msg=name)


def resnet_conv_shapes():
    """Every distinct convolution of ResNet18 at 28x28 input with the map it sees: (name, conv, input shape)."""
    model, seen = stock_resnet18_grey(), {}

    def record(name, module, args):
        shape = (module.in_channels, module.out_channels, module.kernel_size, module.stride, args[0].shape[-2:])
        seen.setdefault(shape, (name, module))

    hooks = [module.register_forward_pre_hook(functools.partial(record, name))
             for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    model.eval()(torch.zeros(1, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    return [(name, module, shape[-1]) for shape, (name, module) in seen.items()]


LAYER_SHAPES = resnet_conv_shapes()


def test_resnet18_at_28x28_has_eleven_convolution_shapes_three_with_one_output_position():
    maps = {name: tuple(size) for name, _, size in LAYER_SHAPES}
    assert len(LAYER_SHAPES) == 11
    assert maps["conv1"] == (28, 28) and maps["layer1.0.conv1"] == (7, 7) and maps["layer3.0.conv2"] == (2, 2)
    single_output = [name for name, conv, size in LAYER_SHAPES
                     if kernel_window(*size, conv.kernel_size, conv.stride, conv.padding) is not None]
    assert single_output == ["layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0"]


def test_kernel_window_marks_the_taps_that_meet_data():
    centre = kernel_window(1, 1, (3, 3), (1, 1), (1, 1))  # 1x1 map, padding 1: only the centre tap
    assert (centre.rows, centre.cols) == (1, 1) and centre.taps.nonzero().tolist() == [[0, 4]]
    strided = kernel_window(2, 2, (3, 3), (2, 2), (1, 1))  # 2x2 map, stride 2: four taps, one per pixel
    assert (strided.rows, strided.cols) == (2, 2)
    assert strided.taps.nonzero().tolist() == [[0, 4], [1, 5], [2, 7], [3, 8]]
    shortcut = kernel_window(2, 2, (1, 1), (2, 2), (0, 0))  # 1x1 shortcut: reads pixel (0, 0), whole kernel
    assert (shortcut.rows, shortcut.cols, shortcut.taps) == (1, 1, None)
    assert kernel_window(2, 2, (3, 3), (1, 1), (1, 1)) is None  # four output positions
    assert kernel_window(7, 7, (3, 3), (1, 1), (1, 1)) is None


def conv_outputs_and_gradients(conv, x, parameters):
    """The output of `conv` on `x` and the gradients of a loss with respect to x and `parameters`."""
    x = x.detach().clone().requires_grad_()
    out = conv(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, [p.grad for p in parameters]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 20, 64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name,stock,size", LAYER_SHAPES, ids=[name for name, _, _ in LAYER_SHAPES])
def test_every_resnet_layer_shape_matches_nn_conv2d(name, stock, size, bias, batch, device):
    """SmallMapConv2d against nn.Conv2d on every layer shape of ResNet18 at 28x28: output, input gradient and
    weight (and bias) gradient; on single-output layers also with its live taps split off for training.
    Tolerance: float32 sums in another order, |a - b| <= 1e-4 + 1e-4 |b| (observed ~1e-6)."""
    torch.manual_seed(batch)
    conv = nn.Conv2d(stock.in_channels, stock.out_channels, stock.kernel_size, stock.stride, stock.padding,
                     bias=bias).to(device)
    fast = SmallMapConv2d(stock.in_channels, stock.out_channels, stock.kernel_size, stock.stride, stock.padding,
                          bias=bias).to(device)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(batch, stock.in_channels, *size, device=device)
    expected = conv_outputs_and_gradients(conv, x, list(conv.parameters()))
    close = dict(rtol=1e-4, atol=1e-4)
    out, x_grad, grads = conv_outputs_and_gradients(fast, x, list(fast.parameters()))
    torch.testing.assert_close(out, expected[0], **close)
    torch.testing.assert_close(x_grad, expected[1], **close)
    for grad, want in zip(grads, expected[2]):
        torch.testing.assert_close(grad, want, **close)

    window = fast._kernel_window(x)
    if window is None or window.taps is None:
        return  # no taps on the padding: nothing to split off
    assert device == "cpu"
    fast.zero_grad(set_to_none=True)
    live = fast.split_live_taps(window)
    assert all(t.is_contiguous() and t.shape == (stock.out_channels, stock.in_channels) for t in live)
    assert torch.equal(fast.weight, conv.weight)  # stored taps first, the same tensor
    out, x_grad, grads = conv_outputs_and_gradients(fast, x, live + ([fast.bias] if bias else []))
    torch.testing.assert_close(out, expected[0], **close)
    torch.testing.assert_close(x_grad, expected[1], **close)
    assert fast.weight.grad is None
    (ph, pw), weight_grad = fast.padding, expected[2][0]
    for (row, col), grad in zip(fast.live_taps, grads):
        torch.testing.assert_close(grad, weight_grad[:, :, row + ph, col + pw], **close)
    dead = torch.ones(fast.kernel_size, dtype=torch.bool)
    for row, col in fast.live_taps:
        dead[row + ph, col + pw] = False
    assert weight_grad[:, :, dead].abs().max() == 0  # what nn.Conv2d computes for the others: zero
    if bias:
        torch.testing.assert_close(grads[-1], expected[2][1], **close)


def test_adam_on_the_live_taps_is_adam_on_the_whole_weight():
    """Fed the same gradients, the optimizer over the live taps and the one over every weight end with the
    same parameters, bit for bit; the taps that meet only padding keep their initial values."""
    torch.manual_seed(0)
    fast = fast_resnet18_grey().train()
    stock = stock_resnet18_grey().train()
    stock.load_state_dict(fast.state_dict())
    initial = {k: v.clone() for k, v in stock.state_dict().items()}
    fast_adam = torch.optim.Adam(prepare_for_cpu_training(fast), lr=0.01, fused=True)
    stock_adam = torch.optim.Adam(stock.parameters(), lr=0.01, fused=True)
    assert sum(t.numel() for t in fast_adam.param_groups[0]["params"]) == 4_228_554  # of 11,175,370
    fast_convs = {name: m for name, m in fast.named_modules() if isinstance(m, SmallMapConv2d)}
    for _ in range(3):
        x, y = torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))
        stock_adam.zero_grad()
        nn.functional.cross_entropy(stock(x), y).backward()
        for name, parameter in stock.named_parameters():  # the stock gradients, handed to the fast model
            module_name, _, kind = name.rpartition(".")
            conv = fast_convs.get(module_name)
            if kind == "weight" and conv is not None and conv.live_taps is not None:
                (ph, pw) = conv.padding
                for (row, col), taps in conv.live_taps.items():
                    taps.grad = parameter.grad[:, :, row + ph, col + pw].clone()
            else:
                fast.get_parameter(name).grad = parameter.grad.clone()
        stock_adam.step()
        fast_adam.step()
    for name, parameter in fast.named_parameters():  # batch norm statistics aside: only stock ran forward
        assert torch.equal(parameter, stock.get_parameter(name)), name
    weight = fast.layer4[1].conv2.weight
    off_centre = torch.ones(3, 3, dtype=torch.bool)
    off_centre[1, 1] = False
    assert torch.equal(weight[:, :, off_centre], initial["layer4.1.conv2.weight"][:, :, off_centre])
    assert not torch.equal(weight[:, :, 1, 1], initial["layer4.1.conv2.weight"][:, :, 1, 1])


def test_live_taps_keep_the_model_a_stock_resnet18(tmp_path):
    torch.manual_seed(0)
    model = fast_resnet18_grey()
    keys = {k: v.shape for k, v in model.state_dict().items()}
    prepare_for_cpu_training(model)
    assert {k: v.shape for k, v in model.state_dict().items()} == keys
    stock_names = [name for name, _ in stock_resnet18_grey().named_parameters()]
    assert [name for name, _ in model.named_parameters()] == stock_names
    first, again = prepare_for_cpu_training(model), prepare_for_cpu_training(model)
    assert list(map(id, first)) == list(map(id, again))  # split once
    with pytest.raises(RuntimeError, match="another input size"):
        model.eval()(torch.rand(2, 1, 56, 56))  # layer4 maps are 2x2 there: the split does not apply
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x)
    stock = to_stock(model)
    assert not any(isinstance(m, SmallMapConv2d) for m in stock.modules())
    assert all(p.is_contiguous() for p in stock.parameters()) and not hasattr(stock.layer4[1].conv2, "live_taps")
    with torch.no_grad():
        torch.testing.assert_close(stock(x), expected, rtol=1e-4, atol=1e-4)


def test_models_without_single_output_convolutions_train_every_parameter():
    model = FashionCNN()
    assert list(map(id, prepare_for_cpu_training(model))) == list(map(id, model.parameters()))
