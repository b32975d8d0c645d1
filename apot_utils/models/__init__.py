"""Model zoo: ``build_model(dataset, arch, bit, scheme, terms, per_channel)``."""
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


def build_model(dataset: str, arch: str, bit: int, scheme: str = "apot", terms: int | None = None,
                per_channel: bool = False) -> nn.Module:
    """A fresh (randomly initialized) model; bit 2..8 quantized, 32 full precision. terms: the number
    n of additive terms (None: the release's); per_channel: one weight α per output channel."""
    if dataset not in ARCHS:
        raise ValueError(f"dataset must be one of {sorted(ARCHS)}, got {dataset!r}")
    if arch not in ARCHS[dataset]:
        raise ValueError(f"arch for {dataset} must be one of {sorted(ARCHS[dataset])}, got {arch!r}")
    if bit not in BITS:
        raise ValueError(f"bit must be one of {BITS}, got {bit!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if bit == FULL_PRECISION and (terms is not None or per_channel):
        raise ValueError("terms and per_channel apply to quantized models (bit 2..8), not to full precision")
    if dataset == "cifar10":
        return CifarResNet(ARCHS[dataset][arch], bit, scheme, terms=terms, per_channel=per_channel)
    return ImageNetResNet(ARCHS[dataset][arch], bit, scheme, terms=terms, per_channel=per_channel)
