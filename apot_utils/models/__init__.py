"""Model zoo: ``build_model(dataset, arch, bit, scheme)``."""
from __future__ import annotations

from torch import nn

from ..layers import FULL_PRECISION
from ..levels import MAX_BITS, MIN_BITS, SCHEMES
from .resnet import CifarResNet, ImageNetResNet

ARCHS = {
    "cifar10": {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56},
    "imagenet": {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)},
}
BITS = tuple(range(MIN_BITS, MAX_BITS + 1)) + (FULL_PRECISION,)


def build_model(dataset: str, arch: str, bit: int, scheme: str = "apot") -> nn.Module:
    """A fresh (randomly initialized) model; bit 2..8 quantized, 32 full precision."""
    if dataset not in ARCHS:
        raise ValueError(f"dataset must be one of {sorted(ARCHS)}, got {dataset!r}")
    if arch not in ARCHS[dataset]:
        raise ValueError(f"arch for {dataset} must be one of {sorted(ARCHS[dataset])}, got {arch!r}")
    if bit not in BITS:
        raise ValueError(f"bit must be one of {BITS}, got {bit!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if dataset == "cifar10":
        return CifarResNet(ARCHS[dataset][arch], bit, scheme)
    return ImageNetResNet(ARCHS[dataset][arch], bit, scheme)
