"""The architectures (:data:`ARCHS`); build one through :class:`apot_utils.fakequant.spec.ModelSpec`."""
from __future__ import annotations

from ...core.levels import FULL_PRECISION, MAX_BITS, MIN_BITS
from .mobilenet import cifar_mobilenet_v2, imagenet_mobilenet_v2, quantized_mobilenet_v2
from .resnet import CifarResNet, ImageNetResNet

# ResNets: depth (CIFAR) or blocks per stage (ImageNet); torchvision networks: their full-precision builder
ARCHS = {
    "cifar10": {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "mobilenet_v2": cifar_mobilenet_v2},
    "imagenet": {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "mobilenet_v2": imagenet_mobilenet_v2},
}
BITS = tuple(range(MIN_BITS, MAX_BITS + 1)) + (FULL_PRECISION,)

__all__ = ["ARCHS", "BITS", "CifarResNet", "ImageNetResNet", "quantized_mobilenet_v2"]
