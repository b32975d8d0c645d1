"""The layers of an integer model: :class:`IntegerConv2d`, :class:`Fixed8bit` and the fixed-order BatchNorm
and pool, and :func:`integer_arithmetic`, which switches them from float to integer arithmetic.

A b-bit level is an integer I (:func:`apot_utils.core.levels.integer_levels`) over the set's largest,
I_max. So a quantized convolution is

    conv(α_a · I_a / I_a,max, α_w · c_w / I_w,max) = s · conv(I_a, c_w),   s = α_a · α_w / (I_a,max · I_w,max)

with activation integers I_a ≥ 0, signed weight integers c_w = ±I_w, and conv(I_a, c_w) an exact
integer: one rescale by s per layer (per output channel with per-channel α), before BatchNorm.
An APoT weight integer has at most n set bits, so multiplying by it is at most n shifts and
n − 1 additions (:func:`apot_utils.integer.arithmetic.shift_add_conv2d`).

:class:`IntegerConv2d` holds a quantized layer as codes (:func:`apot_utils.integer.convert.to_integer` makes
it from a fake-quantized layer, :func:`apot_utils.integer.format.load_exported` from a file) and runs either as the fake-quantized layer
(``integer = False``: the float model's arithmetic) or in integers (``integer = True``). Its level
values are the release's float32 roundings (``level_values='release'``: bit for bit the float model's)
or the exact ratios I / I_max in float64 (``level_values='exact'``).

**The same predictions on every machine.** A float32 convolution sums in an order that depends on the
CPU's instruction set (oneDNN, BLAS and NNPACK pick other kernels), and a quantized network turns a
last-bit difference into another level wherever an activation sits within rounding of a midpoint. Inside
:func:`integer_arithmetic` nothing depends on such a choice: every quantized convolution is an exact
integer sum (:func:`~apot_utils.integer.arithmetic.exact_integer_conv2d`), and every rounding after it happens in one fixed order and
precision: the rescale by s, BatchNorm as three elementwise operations (:class:`FixedOrderBatchNorm2d`),
the residual additions, the average pool, and the 8-bit first convolution and last linear layer summed tap
by tap (:mod:`apot_utils.integer.arithmetic`). Elementwise IEEE operations round the
same way on every machine, so the logits are the same bits on any CPU (tested under other oneDNN
instruction sets and with oneDNN off). That holds for the layers the integer model owns: a pool written as a
function in a network's forward (torchvision's MobileNetV2 calls ``F.adaptive_avg_pool2d``) is torch's own, so
after it the logits can differ in their last bits between machines.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..core.levels import integer_levels, projection_order, weight_projection_order
from ..fakequant.quantizers import quantize_activation, quantize_weight
from ..fast.projection import project
from .arithmetic import (FLOAT64_EXACT, accumulator_bound, exact_integer_conv2d, fixed_order_conv2d,
                         fixed_order_global_mean, fixed_order_linear, folded_scale, in_order, split_codes)

LEVEL_VALUES = ("release", "exact")


def _level_values(integers: torch.Tensor, release: torch.Tensor, level_values: str) -> torch.Tensor:
    """The level values in ``release``'s order: the release's float32 ones, or I / I_max in float64."""
    return release if level_values == "release" else in_order(integers.double() / integers[-1], release)


class IntegerConv2d(nn.Module):
    """An exported quantized convolution.

    codes: int64 b-bit weight codes [O, C / groups, kh, kw] (:func:`~apot_utils.integer.arithmetic.weight_codes`);
    weight_alpha 0-d or [O, 1, 1, 1]; act_alpha 0-d; stride, padding, dilation, groups and bias ([O] or None) as the
    original layer's; bits, scheme, terms: the level sets; signed: the input can be negative (sign and a (b − 1)-bit
    magnitude, as the weights); level_values: 'release' or 'exact' (module docstring). Input [N, C, H, W], >= 0
    unless ``signed``.
    """

    def __init__(self, codes, weight_alpha, act_alpha, stride, padding, bits: int, scheme: str = "apot",
                 terms: int | None = None, level_values: str = "release", *, dilation=1, groups: int = 1,
                 bias: torch.Tensor | None = None, signed: bool = False):
        super().__init__()
        if level_values not in LEVEL_VALUES:
            raise ValueError(f"level_values must be one of {LEVEL_VALUES}, got {level_values!r}")
        self.stride, self.padding, self.dilation, self.groups, self.integer = stride, padding, dilation, groups, False
        self.bits, self.scheme, self.terms, self.signed = bits, scheme, terms, signed
        weight_integers = integer_levels(bits - 1, scheme, terms)
        magnitude_order = weight_projection_order(bits, scheme, terms)
        if signed:        # the input as the weights: sign and a (b − 1)-bit magnitude
            act_integers, act_order = weight_integers, magnitude_order
        else:
            act_integers, act_order = integer_levels(bits, scheme, terms), projection_order(bits, scheme, terms)
        act_values = _level_values(act_integers, act_order, level_values)
        magnitudes = _level_values(weight_integers, magnitude_order.sort().values, level_values)
        index, sign = split_codes(codes, bits)
        dtype = act_values.dtype
        self.register_buffer("codes", codes)
        self.register_buffer("act_levels", act_values)                         # in projection (tie) order
        self.register_buffer("act_sorted", act_values.sort().values)
        self.register_buffer("act_integers", act_integers)
        self.register_buffer("act_alpha", act_alpha.detach().to(dtype).clone())
        self.register_buffer("weight_alpha", weight_alpha.detach().to(dtype).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        # the fake-quantized weight, in the quantizer's order of operations: level · sign · α
        self.register_buffer("weight", magnitudes[index].mul(sign.to(dtype)).mul(self.weight_alpha))
        self.register_buffer("weight_int", weight_integers[index] * sign)     # c_w
        self.register_buffer("scale", folded_scale(act_alpha, weight_alpha, bits, scheme, terms, signed))
        self.bound = accumulator_bound(int(act_integers[-1]), self.weight_int)
        if self.bound >= FLOAT64_EXACT:
            raise ValueError("this layer's integer convolution could overflow float64's exact range")

    def activation_integers(self, x: torch.Tensor) -> torch.Tensor:
        """I_a of inputs x [N, C, H, W]: the level each input projects to (as in the float model), as its integer
        (a signed input: its magnitude's, with x's sign). NaN or infinity has no integer: a FloatingPointError (the
        float path would carry it to the logits)."""
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError("the integer path received NaN or infinity (non-finite input images, or values "
                                     "that overflowed upstream); it has no integer for them")
        q = project(x.abs() if self.signed else x, self.act_levels.to(x.dtype), divisor=self.act_alpha.to(x.dtype))
        integers = self.act_integers[torch.searchsorted(self.act_sorted.to(x.dtype), q)]
        return torch.where(x < 0, -integers, integers) if self.signed else integers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if not self.integer:
            alpha, levels = self.act_alpha.to(x.dtype), self.act_levels.to(x.dtype)
            x = quantize_weight(x, alpha, levels, clip_grad=True) if self.signed else quantize_activation(x, alpha, levels)
            return F.conv2d(x, self.weight.to(x.dtype), bias, self.stride, self.padding, self.dilation, self.groups)
        acc = exact_integer_conv2d(self.activation_integers(x), self.weight_int, self.stride, self.padding, self.bound,
                                   self.dilation, self.groups)
        out = acc.double().mul_(self.scale.view(1, -1, 1, 1)).to(x.dtype)      # exact integers, one rescale
        return out if bias is None else out.add_(bias.view(1, -1, 1, 1))


class Fixed8bit(nn.Module):
    """The 8-bit first convolution or last linear layer from its codes: weight = code / 127 · max,
    computed in the input's dtype (the float model's arithmetic). codes: int64 of the weight's shape;
    weight_max: 0-d; bias: [O] or None; conv: (stride, padding, dilation) for a convolution (without groups), None
    for the linear layer."""

    integer = False        # inside integer_arithmetic: summed in one fixed order (fixed_order_conv2d / _linear)

    def __init__(self, codes, weight_max, bias=None, conv: tuple | None = None):
        super().__init__()
        self.conv = conv
        self.register_buffer("codes", codes)
        self.register_buffer("weight_max", weight_max.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.codes.to(x.dtype).div(127).mul(self.weight_max.to(x.dtype))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.conv is None:
            return fixed_order_linear(x, weight, bias) if self.integer else F.linear(x, weight, bias)
        stride, padding, dilation = self.conv
        if self.integer:
            return fixed_order_conv2d(x, weight, bias, stride, padding, dilation)
        return F.conv2d(x, weight, bias, stride, padding, dilation)


class FixedOrderBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d (eval) whose arithmetic inside :func:`integer_arithmetic` is fixed: (x − mean) · (γ / √(var + ε))
    + β, each an elementwise operation in x's dtype (ATen's kernel folds these differently per instruction set)."""
    integer = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.integer:
            return super().forward(x)
        shape = (1, -1, 1, 1)
        scale = self.weight.to(x.dtype) / (self.running_var.to(x.dtype) + self.eps).sqrt()
        return (x - self.running_mean.to(x.dtype).view(shape)).mul_(scale.view(shape)).add_(self.bias.to(x.dtype).view(shape))


class FixedOrderGlobalPool(nn.Module):
    """A global average pool (``AvgPool2d`` over the whole map, ``AdaptiveAvgPool2d(1)``): ``pool`` itself, inside
    :func:`integer_arithmetic` :func:`fixed_order_global_mean`. Input [N, C, H, W], output [N, C, 1, 1]."""
    integer = False

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(x)
        if not self.integer:
            return out
        if out.shape[2:] != (1, 1):
            raise ValueError(f"{self.pool} does not pool the whole {tuple(x.shape[2:])} map: not a global pool")
        return fixed_order_global_mean(x)


_FIXED_ORDER = (IntegerConv2d, Fixed8bit, FixedOrderBatchNorm2d, FixedOrderGlobalPool)


@contextmanager
def integer_arithmetic(model: nn.Module):
    """Inside the block every :class:`IntegerConv2d` of ``model`` computes in integers and the rest of an exported
    model in one fixed order (module docstring): the same logits on every machine."""
    layers = [m for m in model.modules() if isinstance(m, _FIXED_ORDER)]
    for m in layers:
        m.integer = True
    try:
        yield model
    finally:
        for m in layers:
            m.integer = False


