import torch
from torch import nn

from fashion_compare.models import FashionCNN, build_model, parameter_count, resnet18_grey


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
