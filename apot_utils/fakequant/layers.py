"""Quantized layers: ``QuantConv2d`` and ``QuantLinear`` (APoT/PoT/uniform weights and activations, unsigned or
signed inputs) and the 8-bit first convolution and last linear layer.

Every forward quantizes the weight afresh, except inside :func:`frozen_weights`, which
quantizes each layer's weight once for a validation loop and forgets it on leaving: no cache
outlives the loop, so nothing can go stale when the model is changed (``.data`` writes
included) and nothing extra is saved with the module.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..core.eight_bit import quantize_8bit
from ..core.levels import FULL_PRECISION, projection_order, weight_projection_order
from ..core.reference import normalize_weight, reference_active
from .quantizers import quantize_activation, quantize_weight


class _QuantizedWeight:
    """Mixin: ``self._weight_for_forward()`` is ``self._quantized_weight()``, or the copy that
    :func:`frozen_weights` made of it."""
    _frozen_weight = None

    def _weight_for_forward(self) -> torch.Tensor:
        return self._quantized_weight() if self._frozen_weight is None else self._frozen_weight

    def __getstate__(self):
        """A copy (deepcopy, pickle) made inside :func:`frozen_weights` does not take the frozen weight along:
        it would use that weight forever, whatever its own weights become."""
        state = dict(super().__getstate__())
        state.pop("_frozen_weight", None)
        return state


@contextmanager
def frozen_weights(model: nn.Module):
    """Inside the block, every quantized layer of ``model`` uses the weight it had on entry,
    quantized once (inference without gradients: validation). Modules are unchanged on exit. Under
    :func:`apot_utils.core.reference.reference_formulation` nothing is frozen: every forward quantizes again."""
    layers = [] if reference_active() else [m for m in model.modules() if isinstance(m, _QuantizedWeight)]
    try:
        with torch.no_grad():
            for m in layers:   # a plain attribute, never a registered parameter or buffer
                m.__dict__["_frozen_weight"] = m._quantized_weight().detach()
        yield model
    finally:
        for m in layers:
            m.__dict__.pop("_frozen_weight", None)


class _APoTQuantized(_QuantizedWeight):
    """Mixin for a Conv2d or Linear with b-bit weights and b-bit inputs (:class:`QuantConv2d`, :class:`QuantLinear`).

    bit: 2..8, or 32 for a plain full-precision layer (no α). scheme: 'apot', 'pot' or 'uniform'. Learnable
    clipping thresholds ``weight_alpha`` (normalized-weight units) and ``act_alpha`` (input units).
    ``grad_scale`` multiplies both α gradients; ``clip_weight_grad`` stops the weight gradient beyond ±α (the
    ImageNet release above 2 bits; its 2-bit "calibrated" gradient passes it); ``weight_stats_grad``
    differentiates through the normalization's mean and std (the ImageNet release; the CIFAR-10 release treats
    them as constants); ``weight_norm`` is that normalization (:func:`~apot_utils.core.reference.normalize_weight`:
    'mean_std', the releases', or 'std' or 'channel_std'; set by ``ModelSpec.build``). Levels are projected onto in :func:`apot_utils.core.levels.projection_order`, so
    midpoint ties go where the release sent them.

    terms: the number n of additive terms of the level sets (None: the release's, ceil(b / 2) for unsigned
    inputs, ceil((b - 1) / 2) for the weight magnitudes). per_channel: one weight α per output channel
    (``weight_alpha`` of shape [C_out, 1, ...]) instead of one per layer; the weights are still normalized over
    the tensor, as in the release. signed: the input can be negative (it does not follow a ReLU): it is
    quantized as the weights are, sign and a (b − 1)-bit magnitude set, α · sign(c) · nearest(|c|),
    c = clip(x / α, −1, 1), with no gradient to inputs beyond ±α. Unsigned (the release's): α · nearest(clip(x / α, 0, 1)).
    """

    def _init_quantization(self, out_channels: int, weight_dims: int, bit: int, scheme: str, terms: int | None,
                           per_channel: bool, weight_alpha: float, act_alpha: float, grad_scale: float, signed: bool):
        self.bit, self.scheme, self.terms, self.grad_scale, self.signed = bit, scheme, terms, grad_scale, signed
        self.clip_weight_grad, self.weight_stats_grad, self.weight_norm = False, True, "mean_std"
        if bit != FULL_PRECISION:
            magnitudes = weight_projection_order(bit, scheme, terms)
            self.register_buffer("weight_levels", magnitudes, persistent=False)
            self.register_buffer("act_levels", magnitudes.clone() if signed else projection_order(bit, scheme, terms),
                                 persistent=False)
            shape = (out_channels,) + (1,) * (weight_dims - 1) if per_channel else ()
            self.weight_alpha = nn.Parameter(torch.full(shape, float(weight_alpha)))
            self.act_alpha = nn.Parameter(torch.tensor(float(act_alpha)))

    @property
    def quantized(self) -> bool:
        return self.bit != FULL_PRECISION

    @property
    def per_channel(self) -> bool:
        return self.quantized and self.weight_alpha.dim() > 0

    def _quantized_weight(self) -> torch.Tensor:
        if not self.quantized:
            return self.weight
        return quantize_weight(normalize_weight(self.weight, self.weight_stats_grad, self.weight_norm), self.weight_alpha,
                               self.weight_levels, self.grad_scale, self.clip_weight_grad)

    def _quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantized:
            return x
        if self.signed:
            return quantize_weight(x, self.act_alpha, self.act_levels, self.grad_scale, clip_grad=True)
        return quantize_activation(x, self.act_alpha, self.act_levels, self.grad_scale)

    def _quantization_repr(self) -> str:
        terms = "" if self.terms is None else f", terms={self.terms}"
        channel = ", per_channel=True" if self.per_channel else ""
        signed = ", signed=True" if self.signed else ""
        norm = "" if self.weight_norm == "mean_std" else f", weight_norm={self.weight_norm}"
        return f", bit={self.bit}, scheme={self.scheme}{terms}{channel}{signed}{norm}"


class QuantConv2d(_APoTQuantized, nn.Conv2d):
    """Conv2d with b-bit weights and b-bit input activations (:class:`_APoTQuantized` gives the options). Input
    [N, C_in, H, W]: non-negative unless ``signed`` (it follows a ReLU, as in the release). Groups (depthwise
    included), dilation, bias and padding_mode as nn.Conv2d's."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=False, bit: int = 4, scheme: str = "apot", terms: int | None = None,
                 per_channel: bool = False, weight_alpha: float = 3.0, act_alpha: float = 8.0,
                 grad_scale: float = 1.0, signed: bool = False, padding_mode: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)
        self._init_quantization(out_channels, 4, bit, scheme, terms, per_channel, weight_alpha, act_alpha, grad_scale, signed)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **options) -> "QuantConv2d":
        """A QuantConv2d with ``conv``'s shape, padding mode and weights; ``options``: bit, scheme, terms,
        per_channel, signed, ... (the constructor's)."""
        return _copy_float(cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                               conv.dilation, conv.groups, conv.bias is not None, padding_mode=conv.padding_mode,
                               **options), conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quantized_input(x), self._weight_for_forward(), self.bias)   # any padding_mode

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quantization_repr()


class QuantLinear(_APoTQuantized, nn.Linear):
    """Linear with b-bit weights and b-bit inputs [N, in_features] (:class:`_APoTQuantized` gives the options)."""

    def __init__(self, in_features, out_features, bias=True, bit: int = 4, scheme: str = "apot",
                 terms: int | None = None, per_channel: bool = False, weight_alpha: float = 3.0,
                 act_alpha: float = 8.0, grad_scale: float = 1.0, signed: bool = False):
        super().__init__(in_features, out_features, bias)
        self._init_quantization(out_features, 2, bit, scheme, terms, per_channel, weight_alpha, act_alpha, grad_scale, signed)

    @classmethod
    def from_float(cls, linear: nn.Linear, **options) -> "QuantLinear":
        """A QuantLinear with ``linear``'s shape and weights; ``options`` as the constructor's."""
        return _copy_float(cls(linear.in_features, linear.out_features, linear.bias is not None, **options), linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quantized_input(x), self._weight_for_forward(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quantization_repr()


class FirstConv8bit(_QuantizedWeight, nn.Conv2d):
    """First convolution with 8-bit weights (``round(w / max w · 127)``), full-precision input."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> "FirstConv8bit":
        """``conv`` (shape, padding mode, weights) with 8-bit weights."""
        return _copy_float(cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                               conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode), conv)

    def _quantized_weight(self) -> torch.Tensor:
        return quantize_8bit(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self._weight_for_forward(), self.bias)          # any padding_mode


class LastLinear8bit(_QuantizedWeight, nn.Linear):
    """Classifier with 8-bit weights, as the first layer; input [N, in_features]."""

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "LastLinear8bit":
        """``linear`` (shape, weights) with 8-bit weights."""
        return _copy_float(cls(linear.in_features, linear.out_features, linear.bias is not None), linear)

    def _quantized_weight(self) -> torch.Tensor:
        return quantize_8bit(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._weight_for_forward(), self.bias)


def swap(model: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """Put ``replacements[name]`` in place of the submodule ``name`` of ``model``, in place, under every name that
    module is registered under (``self.c = self.b``: both), so that a shared module stays shared. The one way
    modules are swapped: ``convert`` (float to fake-quantized), ``to_integer`` and ``load_exported`` (to integers).
    Returns ``model``."""
    modules = dict(model.named_modules())
    for name, new in replacements.items():
        old = modules[name]
        for alias, module in list(model.named_modules(remove_duplicate=False)):
            if module is old and alias:
                parent, _, child = alias.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def _copy_float(new: nn.Module, old: nn.Module) -> nn.Module:
    """``old``'s weight and bias copied into ``new``, which goes to their device and dtype."""
    with torch.no_grad():
        new.weight.copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    return new.to(old.weight.device, old.weight.dtype)


def quantized_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """(name, layer) of every quantized QuantConv2d and QuantLinear, in ``model.modules()`` order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, _APoTQuantized) and m.quantized]


def alphas(model: nn.Module) -> list[tuple[str, float, float]]:
    """(layer name, weight α, activation α) of every quantized layer, in module order; a layer
    with one weight α per channel reports their mean."""
    return [(name, m.weight_alpha.mean().item(), m.act_alpha.item()) for name, m in quantized_layers(model)]
