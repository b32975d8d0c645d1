"""MobileNetV2 (Sandler et al. 2018) from torchvision, quantized by :func:`apot_utils.fakequant.convert.convert`.

CIFAR-10 (:func:`cifar_mobilenet_v2`): torchvision's ``mobilenet_v2(num_classes=10)`` at width 0.5 with a CIFAR
stem, input [N, 3, 32, 32]: the first convolution at stride 1 instead of 2, so the feature maps go
32 → 16 → 8 → 4 → 2 over the stages (ImageNet's network goes 112 → 56 → 28 → 14 → 7 from 224). ImageNet
(:func:`imagenet_mobilenet_v2`): torchvision's network as it is, input [N, 3, 224, 224].

At ``bit`` 2..8 every convolution (depthwise included) and the classifier are quantized, the first and the last
8-bit; the layers that see a linear bottleneck's output (no ReLU6 in front: each block's 1×1 expansion and the
last 1×1 convolution) get signed input sets, found from the graph (``signed='graph'``).
"""
from __future__ import annotations

from torch import nn

from ...core.levels import FULL_PRECISION
from ..convert import convert

CIFAR_WIDTH = 0.5


def cifar_mobilenet_v2() -> nn.Module:
    """The full-precision CIFAR-10 MobileNetV2 (10 classes)."""
    import torchvision      # here, not at import: torchvision loads torch._dynamo, which the package avoids
    model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=CIFAR_WIDTH)
    model.features[0][0].stride = (1, 1)
    return model


def imagenet_mobilenet_v2() -> nn.Module:
    """torchvision's full-precision MobileNetV2 (1,000 classes, width 1)."""
    import torchvision
    return torchvision.models.mobilenet_v2(num_classes=1000)


def quantized_mobilenet_v2(full_precision: nn.Module, bit: int, scheme: str, terms: int | None,
                           per_channel: bool) -> nn.Module:
    """``full_precision`` itself at bit 32, else its converted copy (8-bit first and last layer, signed inputs
    from the graph)."""
    if bit == FULL_PRECISION:
        return full_precision
    return convert(full_precision, bit, scheme, terms, per_channel, signed="graph").model
