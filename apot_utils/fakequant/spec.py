"""One description of a model: :class:`ModelSpec` builds it, writes it into a checkpoint's metadata and is
read back from that metadata; every command and ``train --init`` go through it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from ..core.levels import FULL_PRECISION, LEVEL_RULE, SCHEMES, projection_order, weight_projection_order
from ..core.reference import WEIGHT_NORMS
from .layers import quantized_layers
from .models import ARCHS, BITS, CifarResNet, ImageNetResNet, quantized_mobilenet_v2

# How a quantized model's layers quantize, beside its bit and scheme, with the releases' values: what a file records
# and a model loaded from it must share (a file without a field was made with that default).
QUANTIZER_FIELDS = {"terms": None, "per_channel": False, "weight_norm": "mean_std"}
SPEC_FIELDS = ("dataset", "arch", "bit", "scheme", *QUANTIZER_FIELDS)
IMAGE_SIZE = {"cifar10": 32, "imagenet": 224}


@dataclass(frozen=True)
class ModelSpec:
    """dataset 'cifar10' / 'imagenet'; arch (:data:`~apot_utils.fakequant.models.ARCHS`); bit 2..8, or 32 for
    full precision; scheme 'apot' / 'pot' / 'uniform'; terms: the number n of additive terms (None: the
    release's, ceil(b / 2)); per_channel: one weight α per output channel; weight_norm: how each layer's weights
    are normalized before they are quantized (:func:`~apot_utils.core.reference.normalize_weight`: 'mean_std', the
    releases', 'std' or 'channel_std'); level_rule: the version of the
    level sets' construction (:data:`~apot_utils.core.levels.LEVEL_RULE`). Invalid combinations are refused
    on construction."""
    dataset: str = "cifar10"
    arch: str = "resnet20"
    bit: int = 4
    scheme: str = "apot"
    terms: int | None = None
    per_channel: bool = False
    weight_norm: str = "mean_std"
    level_rule: str = LEVEL_RULE

    def __post_init__(self):
        if self.dataset not in ARCHS:
            raise ValueError(f"dataset must be one of {sorted(ARCHS)}, got {self.dataset!r}")
        if self.arch not in ARCHS[self.dataset]:
            raise ValueError(f"arch for {self.dataset} must be one of {sorted(ARCHS[self.dataset])}, got {self.arch!r}")
        if self.bit not in BITS or isinstance(self.bit, bool):
            raise ValueError(f"bit must be one of {BITS}, got {self.bit!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.weight_norm not in WEIGHT_NORMS:
            raise ValueError(f"weight_norm must be one of {WEIGHT_NORMS}, got {self.weight_norm!r}")
        if not self.quantized and self.quantizer_options() != QUANTIZER_FIELDS:
            raise ValueError(f"{', '.join(QUANTIZER_FIELDS)} apply to quantized models (bit 2..8), not to full precision")
        if self.quantized:     # a bit, scheme and terms without a level set: refused here, before any work
            projection_order(self.bit, self.scheme, self.terms), weight_projection_order(self.bit, self.scheme, self.terms)
        if self.level_rule != LEVEL_RULE:
            raise ValueError(f"made with level-set rule {self.level_rule!r}; this version builds {LEVEL_RULE!r}, so "
                             "its levels would differ")

    @property
    def quantized(self) -> bool:
        return self.bit != FULL_PRECISION

    def quantizer_options(self) -> dict:
        """terms, per_channel and weight_norm (:data:`QUANTIZER_FIELDS`)."""
        return {name: getattr(self, name) for name in QUANTIZER_FIELDS}

    @property
    def image_size(self) -> int:
        """The side of the square images the model is made for, in pixels: 32 (CIFAR-10), 224 (ImageNet)."""
        return IMAGE_SIZE[self.dataset]

    def describe(self) -> str:
        """e.g. '3-bit resnet20 cifar10', 'full-precision resnet18 imagenet'."""
        width = f"{self.bit}-bit" if self.quantized else "full-precision"
        return f"{width} {self.arch} {self.dataset}"

    def build(self) -> nn.Module:
        """A fresh, randomly initialized model; ``model.spec`` is this description."""
        shape = ARCHS[self.dataset][self.arch]
        if callable(shape):       # a torchvision network, converted (:func:`apot_utils.fakequant.convert.convert`)
            model = quantized_mobilenet_v2(shape(), self.bit, self.scheme, self.terms, self.per_channel)
        else:
            cls = CifarResNet if self.dataset == "cifar10" else ImageNetResNet
            model = cls(shape, self.bit, self.scheme, terms=self.terms, per_channel=self.per_channel)
        for _, layer in quantized_layers(model):
            layer.weight_norm = self.weight_norm
        model.spec = self
        return model

    def meta(self) -> dict:
        """The checkpoint metadata that describes this model (read back by :meth:`from_meta`)."""
        return {name: getattr(self, name) for name in SPEC_FIELDS} | {"level_rule": self.level_rule}

    @classmethod
    def from_meta(cls, meta: dict, **defaults) -> "ModelSpec":
        """The model a checkpoint's metadata describes; ``defaults`` fill what it does not record (the
        release's files record dataset, arch and bit only; a full-precision model has no terms)."""
        values = {**defaults, **{k: meta[k] for k in (*SPEC_FIELDS, "level_rule") if meta.get(k) is not None}}
        values["per_channel"] = bool(values.get("per_channel", False))
        if values.get("bit") == FULL_PRECISION:
            for name in QUANTIZER_FIELDS:
                values.pop(name, None)
        return cls(**values)

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)
