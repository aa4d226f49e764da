import pytest
import torch
from torch import nn

from fashion_compare.models import FashionCNN, SmallMapConv2d, build_model, parameter_count, resnet18_grey, to_stock


def test_resnet18_takes_one_channel_and_predicts_ten_classes():
    model = resnet18_grey().eval()
    assert model.conv1.in_channels == 1
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert model.fc.out_features == 10
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # torchvision's ResNet18 (11,689,512 for RGB and 1000 classes) less 2x64x49 conv1 weights and the
    # 1000-way head, plus a 10-way head: 11,175,370
    assert parameter_count(model) == 11_175_370


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


def test_build_model_by_name():
    assert isinstance(build_model("cnn"), FashionCNN)
    assert build_model("resnet").conv1.in_channels == 1


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
    fast = resnet18_grey().to(device)
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


@pytest.mark.parametrize("bias", [False, True])
def test_small_map_conv_on_one_pixel_is_the_centre_tap(bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 512, kernel_size=3, padding=1, bias=bias)
    fast = SmallMapConv2d(256, 512, kernel_size=3, padding=1, bias=bias)
    fast.load_state_dict(conv.state_dict())
    x = torch.rand(20, 256, 1, 1, requires_grad=True)
    x_fast = x.detach().clone().requires_grad_()
    conv(x).square().sum().backward()
    fast(x_fast).square().sum().backward()
    torch.testing.assert_close(x_fast.grad, x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-5)
    assert fast.weight.grad[:, :, 0, 0].abs().max() == 0  # only the centre tap ever meets data
    # larger maps and strided convolutions take nn.Conv2d's own path
    x2 = torch.rand(4, 256, 2, 2)
    torch.testing.assert_close(fast(x2), conv(x2))


def test_checkpoint_weights_load_into_stock_torchvision_and_predict_the_same(real_raw):
    from fashion_compare import data

    test = data.to_tensors(data.stratified_sample(real_raw[1], 500, seed=0))
    torch.manual_seed(1)
    fast = resnet18_grey().eval()
    stock = stock_resnet18_grey().eval()
    stock.load_state_dict(fast.state_dict())  # strict: the same keys and shapes
    with torch.inference_mode():
        assert torch.equal(fast(test["images"]).argmax(1), stock(test["images"]).argmax(1))
    back = to_stock(resnet18_grey())
    assert not any(isinstance(m, SmallMapConv2d) for m in back.modules())
