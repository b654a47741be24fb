"""Parameters, MACs and receptive fields of torchvision models against published and hand-derived values.

Published figures come from torchvision's weight enums (``meta["num_params"]``, ``meta["_ops"]``; reading
them downloads nothing) and from Araujo et al., "Computing Receptive Fields of Convolutional Neural
Networks", Distill 2019 (table of google-research/receptive_field, TF-slim models at 224x224):

=================  ====  ======  =======
model              r     stride  padding
=================  ====  ======  =======
alexnet_v2         195   32      64
vgg_16 (pool5)     212   32      90
inception_v3       1311  32      618
resnet_v1_50       483   32      239
mobilenet_v1       315   32      126
=================  ====  ======  =======

torchvision's inception_v3 is a port of TF-slim's and reproduces its row exactly (299x299 input). The
table has no MobileNetV2 and no ResNet-18. ``TORCHVISION_TRF`` holds the values for torchvision's
own architectures at the last spatial feature map, derived by hand in the comments below and verified
independently by the autograd support of a positive linear copy (``test_support_matches_trf``).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torchvision

from cnnablate.measure import count_macs, count_params, positive_linear_copy, theoretical_rf

WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    "alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
    "mobilenet_v2": torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
    # One model of every other family (all of them: benchmarks/measure_zoo.py, table in docs/measure_zoo.md)
    "mobilenet_v3_small": torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
    "efficientnet_b0": torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1,
    "mnasnet0_5": torchvision.models.MNASNet0_5_Weights.IMAGENET1K_V1,
    "shufflenet_v2_x0_5": torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1,
    "squeezenet1_1": torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    "regnet_y_400mf": torchvision.models.RegNet_Y_400MF_Weights.IMAGENET1K_V1,
    "densenet121": torchvision.models.DenseNet121_Weights.IMAGENET1K_V1,
    "convnext_tiny": torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1,
    # attention: torchvision's MultiheadAttention (ViT), its own window attention (Swin), einsum (MaxViT)
    "vit_b_32": torchvision.models.ViT_B_32_Weights.IMAGENET1K_V1,
    "swin_t": torchvision.models.Swin_T_Weights.IMAGENET1K_V1,
    "maxvit_t": torchvision.models.MaxVit_T_Weights.IMAGENET1K_V1,
}

ARAUJO_TABLE = {
    "alexnet_v2": (195, 32, 64),
    "vgg_16": (212, 32, 90),
    "inception_v3": (1311, 32, 618),
    "resnet_v1_50": (483, 32, 239),
    "mobilenet_v1": (315, 32, 126),
}

# (size, stride, padding, module whose output is the last spatial feature map) at 224x224.
TORCHVISION_TRF = {
    # conv1 11x11/4 pad 2: (11, 4, 2); pool 3/2: (19, 8, 2); conv 5x5 pad 2: (51, 8, 18); pool: (67, 16, 18);
    # three 3x3 convs: (163, 16, 66); pool5: (195, 32, 66). TF-slim's alexnet_v2 has a VALID (unpadded)
    # conv1, hence the table's padding 64 = 66 - 2; size and stride agree. The identity adaptive pool
    # (6x6 -> 6x6) that follows is the last spatial map.
    "alexnet": (195, 32, 66, "avgpool"),
    # Identical to the table: 13 3x3 convs and five 2x2/2 pools; pool5 = (212, 32, 90), then the identity
    # adaptive pool (7x7 -> 7x7).
    "vgg16": (212, 32, 90, "avgpool"),
    # conv1 7x7/2 pad 3: (7, 2, 3); maxpool 3/2 pad 1: (11, 4, 5); each 3x3 conv adds 2 j and j to the
    # padding; the stride is on the first 3x3 conv of layers 2-4. layer1 (43, 4, 21), layer2 (99, 8, 49),
    # layer3 (211, 16, 105), layer4 (435, 32, 217).
    "resnet18": (435, 32, 217, "layer4"),
    # One 3x3 conv per bottleneck: layer1 (35, 4, 17), layer2 (91, 8, 45), layer3 (267, 16, 133),
    # layer4 (427, 32, 213). torchvision strides the 3x3 conv of the FIRST block of each stage ("v1.5"),
    # TF-slim's resnet_v1_50 the LAST unit of blocks 1-3 (and none in block 4), so its 3x3 convs sit at
    # smaller jumps early and larger ones later: 483/32/239 in the table versus 427/32/213 here.
    "resnet50": (427, 32, 213, "layer4"),
    # Stem 3x3/2: (3, 2, 1); then one depthwise 3x3 per inverted residual, strided in the first block of
    # the stages with s=2: after the 17 blocks (491, 32, 245); the final 1x1 conv keeps it.
    "mobilenet_v2": (491, 32, 245, "features"),
}

VGG16_TABLE_LAYERS = {  # vgg_16 end-points of the table, all equal in torchvision's vgg16
    "features.4": (6, 2, 2),  # pool1
    "features.9": (16, 4, 6),  # pool2
    "features.16": (44, 8, 18),  # pool3
    "features.23": (100, 16, 42),  # pool4
    "features.24": (132, 16, 58),  # conv5_1
    "features.26": (164, 16, 74),  # conv5_2
    "features.30": (212, 32, 90),  # pool5
}


@functools.cache
def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None)


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_params_and_macs_match_torchvision(name: str) -> None:
    meta = WEIGHTS[name].meta
    model = build(name)
    assert count_params(model) == meta["num_params"]
    assert round(count_macs(model, 224) / 1e9, 3) == meta["_ops"]


@pytest.mark.parametrize("name", list(TORCHVISION_TRF))
def test_trf_of_torchvision_models(name: str) -> None:
    size, stride, padding, module = TORCHVISION_TRF[name]
    result = theoretical_rf(build(name), 224)
    assert (result.size, result.stride, result.padding) == ((size,) * 2, (stride,) * 2, (padding,) * 2)
    assert result.module == module
    assert result.method == "fx"


def test_what_follows_the_last_spatial_map() -> None:
    vit = theoretical_rf(build("vit_b_32"), 224)
    assert (vit.size, vit.stride, vit.module) == ((32, 32), (32, 32), "conv_proj")
    assert vit.global_after == "conv_proj"  # every token attends to all 49 patches in the first layer
    assert vit.mixing == "MultiheadAttention at encoder.layers.encoder_layer_0.self_attention"
    assert theoretical_rf(build("resnet18"), 224).global_after is None  # global pooling, then one unit
    assert theoretical_rf(build("alexnet"), 224).global_after == "avgpool"  # a linear layer over all 6x6


def test_vgg16_layers_match_araujo_table() -> None:
    result = theoretical_rf(build("vgg16"), 224)
    for module, (size, stride, padding) in VGG16_TABLE_LAYERS.items():
        entry = result.at(module)
        assert (entry.size, entry.stride, entry.padding) == ((size,) * 2, (stride,) * 2, (padding,) * 2), module
    assert ARAUJO_TABLE["vgg_16"] == TORCHVISION_TRF["vgg16"][:3]


def test_inception_v3_matches_araujo_table() -> None:
    model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    result = theoretical_rf(model, 299)
    size, stride, padding = ARAUJO_TABLE["inception_v3"]
    assert (result.size, result.stride, result.padding) == ((size,) * 2, (stride,) * 2, (padding,) * 2)
    assert result.module == "Mixed_7c"


def test_resnet18_stages_and_hook_frontend_agree_with_fx() -> None:
    model = build("resnet18")
    fx_result = theoretical_rf(model, 224)
    hooks = theoretical_rf(model, 224, method="hooks")
    assert hooks.method == "hooks"
    assert [(e.name, e.size, e.stride, e.padding, e.shape) for e in hooks.layers] == [
        (e.name, e.size, e.stride, e.padding, e.shape) for e in fx_result.layers
    ]
    stages = {
        "layer1": (43, 4, 21),
        "layer2": (99, 8, 49),
        "layer3": (211, 16, 105),
        "layer4": (435, 32, 217),
    }
    for stage, (size, stride, padding) in stages.items():
        for result in (fx_result, hooks):
            entry = result.at(stage)
            assert (entry.size[0], entry.stride[0], entry.padding[0]) == (size, stride, padding)
    layer3 = theoretical_rf(model, 224, layer="layer3")
    assert (layer3.size, layer3.module, layer3.shape) == ((211, 211), "layer3", (14, 14))


# Where to observe the last spatial map on a larger canvas: alexnet's and vgg16's adaptive average pool is
# the identity only at 224x224 (6x6 and 7x7 maps), so their support is taken at pool5 (``features``).
SUPPORT_MODULE = {"alexnet": "features", "vgg16": "features"}


@pytest.mark.parametrize("name", list(TORCHVISION_TRF))
def test_support_matches_trf(name: str) -> None:
    """Autograd check, independent of the graph analysis.

    In a positive linear copy the input gradient of a unit of the last spatial map is non-zero exactly on
    its receptive field [-p + i j, -p + i j + r - 1]. The unit is (i, i + 1), so rows and columns check
    the field of two neighbouring positions: size, padding and stride.
    """
    size, stride, padding, module = TORCHVISION_TRF[name]
    row = math.ceil(padding / stride)  # first unit whose field starts inside the canvas
    col = row + 1
    canvas = -padding + col * stride + size + 8  # a margin after the second field
    model = positive_linear_copy(build(name))
    captured = {}
    model.get_submodule(SUPPORT_MODULE.get(name, module)).register_forward_hook(lambda m, i, o: captured.update(out=o))
    x = torch.ones((1, 3, canvas, canvas), requires_grad=True)
    model(x)
    (grad,) = torch.autograd.grad(captured["out"][0, :, row, col].sum(), x)
    nonzero = grad[0].sum(0) > 0
    rows = nonzero.any(1).nonzero().flatten()
    cols = nonzero.any(0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item()) == (
        -padding + row * stride,
        -padding + row * stride + size - 1,
    )
    assert (cols.min().item(), cols.max().item()) == (
        -padding + col * stride,
        -padding + col * stride + size - 1,
    )
