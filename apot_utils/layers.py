"""Quantized layers: ``QuantConv2d`` (APoT/PoT/uniform weights and activations) and the
8-bit first convolution and last linear layer.

In ``eval()`` mode with gradients off, each layer quantizes its weight once and reuses it
until the weight or α changes (tracked by their version counters and storage), the layer
goes back to ``train()``, or it moves device. The cached tensor is exactly what the
uncached path computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .levels import level_set, weight_magnitudes
from .quantize import normalize_weight, quantize_8bit, quantize_activation, quantize_weight

FULL_PRECISION = 32


class _EvalWeightCache:
    """Mixin: ``self._weight_for_forward()`` caches ``self._quantized_weight()`` in eval mode."""

    def _cache_key(self):
        return tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in self.parameters(recurse=False))

    def _weight_for_forward(self) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self._quantized_weight()
        key = self._cache_key()
        if getattr(self, "_cached_key", None) != key:
            self._cached_weight = self._quantized_weight()
            self._cached_key = key
        return self._cached_weight

    def train(self, mode: bool = True):
        self._cached_key = self._cached_weight = None
        return super().train(mode)


class QuantConv2d(_EvalWeightCache, nn.Conv2d):
    """Conv2d with b-bit weights and b-bit input activations.

    Input: [N, C_in, H, W], non-negative (it follows a ReLU). bit: 2..8, or 32 for a plain
    full-precision convolution (no α). scheme: 'apot', 'pot' or 'uniform'. Learnable clipping
    thresholds ``weight_alpha`` (normalized-weight units) and ``act_alpha`` (activation units).
    ``grad_scale`` multiplies both α gradients; ``clip_weight_grad`` stops the weight gradient
    beyond ±α (the ImageNet release above 2 bits; its 2-bit "calibrated" gradient passes it).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=False, bit: int = 4, scheme: str = "apot",
                 weight_alpha: float = 3.0, act_alpha: float = 8.0, grad_scale: float = 1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.bit, self.scheme, self.grad_scale, self.clip_weight_grad = bit, scheme, grad_scale, False
        if bit != FULL_PRECISION:
            self.register_buffer("weight_levels", weight_magnitudes(bit, scheme), persistent=False)
            self.register_buffer("act_levels", level_set(bit, scheme), persistent=False)
            self.weight_alpha = nn.Parameter(torch.tensor(weight_alpha))
            self.act_alpha = nn.Parameter(torch.tensor(act_alpha))

    @property
    def quantized(self) -> bool:
        return self.bit != FULL_PRECISION

    def _quantized_weight(self) -> torch.Tensor:
        if not self.quantized:
            return self.weight
        return quantize_weight(normalize_weight(self.weight), self.weight_alpha, self.weight_levels,
                               self.grad_scale, self.clip_weight_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized:
            x = quantize_activation(x, self.act_alpha, self.act_levels, self.grad_scale)
        return F.conv2d(x, self._weight_for_forward(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bit={self.bit}, scheme={self.scheme}"


class FirstConv8bit(_EvalWeightCache, nn.Conv2d):
    """First convolution with 8-bit weights (``round(w / max w · 127)``), full-precision input."""

    def _quantized_weight(self) -> torch.Tensor:
        return quantize_8bit(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self._weight_for_forward(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class LastLinear8bit(_EvalWeightCache, nn.Linear):
    """Classifier with 8-bit weights, as the first layer; input [N, in_features]."""

    def _quantized_weight(self) -> torch.Tensor:
        return quantize_8bit(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._weight_for_forward(), self.bias)


def quantized_layers(model: nn.Module) -> list[tuple[str, QuantConv2d]]:
    """(name, layer) of every quantized QuantConv2d, in ``model.modules()`` order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, QuantConv2d) and m.quantized]


def alphas(model: nn.Module) -> list[tuple[str, float, float]]:
    """(layer name, weight α, activation α) of every quantized layer, in module order."""
    return [(name, m.weight_alpha.item(), m.act_alpha.item()) for name, m in quantized_layers(model)]
