"""Integer codes and exact integer arithmetic: a quantized layer's weights as b-bit codes (and packed),
the integer convolution written three ways (exact sum, im2col in a float type that holds it exactly,
shifts and adds), its accumulator bound, and the fixed-order float sums of the 8-bit layers.

A b-bit level is an integer I (:func:`apot_utils.core.levels.integer_levels`) over the set's largest,
I_max, so a quantized convolution is s · conv(I_a, c_w), s = α_a · α_w / (I_a,max · I_w,max)
(:mod:`apot_utils.integer.layers` explains it); conv(I_a, c_w) is an exact integer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.levels import integer_levels
from ..core.reference import normalize_weight
from ..fakequant.im2col import conv2d_by_matmul
from ..fast.projection import project

FLOAT64_EXACT = 2**53     # integers up to this magnitude, and their sums, are exact in float64
FLOAT32_EXACT = 2**24     # the same in float32


def weight_codes(weight: torch.Tensor, alpha: torch.Tensor, bits: int, magnitudes_in_order: torch.Tensor,
                 stats_grad: bool = True, norm: str = "mean_std") -> torch.Tensor:
    """b-bit codes of a layer's weights, as the quantizer projects them: the magnitude's index into the
    sorted (b − 1)-bit set in the low b − 1 bits, the sign in bit b − 1 (set only for non-zero
    negative weights). weight: [C_out, C_in, kh, kw]; alpha: 0-d or [C_out, 1, 1, 1]; norm: the layer's weight
    normalization (:func:`~apot_utils.core.reference.normalize_weight`).
    Returns int64 codes of the weight's shape."""
    with torch.no_grad():
        u = (normalize_weight(weight.detach(), stats_grad, norm) / alpha.detach()).clamp(-1, 1)
        magnitude = project(u.abs(), magnitudes_in_order)
        index = torch.searchsorted(magnitudes_in_order.sort().values.to(u.dtype), magnitude.contiguous())
        negative = (u < 0) & (index > 0)
    return index | (negative.long() << (bits - 1))


def split_codes(codes: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(magnitude index, sign ±1) of b-bit weight codes."""
    index = codes & ((1 << (bits - 1)) - 1)
    sign = 1 - 2 * ((codes >> (bits - 1)) & 1)
    return index, sign


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes 0 .. 2^bits − 1 (any shape) as a uint8 bit stream, ``bits`` bits each, least significant first."""
    if int(codes.min()) < 0 or int(codes.max()) >= 1 << bits:
        raise ValueError(f"codes must be in 0..{(1 << bits) - 1}")
    stream = ((codes.reshape(-1, 1) >> torch.arange(bits)) & 1).flatten()
    stream = torch.cat([stream, stream.new_zeros(-len(stream) % 8)]).view(-1, 8)
    return (stream << torch.arange(8)).sum(1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` codes of :func:`pack_codes`'s stream, as int64."""
    stream = ((packed.long().reshape(-1, 1) >> torch.arange(8)) & 1).flatten()[:count * bits]
    if stream.numel() != count * bits:
        raise ValueError(f"{packed.numel()} bytes hold fewer than {count} codes of {bits} bits")
    return (stream.view(count, bits) << torch.arange(bits)).sum(1)


def _unfold(a: torch.Tensor, w: torch.Tensor, stride, padding, dtype: torch.dtype = torch.int64, dilation=1
            ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """im2col of a [N, C, H, W] for weights w [O, C / groups, kh, kw]: columns [N, C·kh·kw, L] (channel-major, so
    group g's are rows g·(C / groups)·kh·kw onwards) in ``dtype`` (exact: unfolding copies values; int64 columns
    are unfolded through float64, so integers must stay below 2^53) and the output shape [N, O, H', W']."""
    stride, padding, dilation = (nn.modules.utils._pair(v) for v in (stride, padding, dilation))
    kh, kw = w.shape[2:]
    if dtype == torch.int64:
        if int(a.abs().max()) >= FLOAT64_EXACT:
            raise ValueError("activation integers too large to unfold exactly")
        cols = F.unfold(a.double(), (kh, kw), dilation=dilation, padding=padding, stride=stride).long()
    else:
        cols = F.unfold(a.to(dtype), (kh, kw), dilation=dilation, padding=padding, stride=stride)
    height = (a.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    width = (a.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return cols, (len(a), len(w), height, width)


def integer_conv2d(a: torch.Tensor, w: torch.Tensor, stride=1, padding=0) -> torch.Tensor:
    """conv2d of int64 activations [N, C, H, W] with int64 weights [O, C, kh, kw] in int64 arithmetic
    (products and sums exact as long as they stay below 2^63). Returns int64 [N, O, H', W']."""
    cols, shape = _unfold(a, w, stride, padding)
    return (w.reshape(len(w), -1) @ cols).view(shape)          # int64 matmul


def power_of_two_parts(w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Signed integers w (any shape) as a list of (shift, sign) tensors, one per set bit:
    w = Σ_i sign_i · (1 << shift_i), with sign_i = 0 where w has fewer set bits than i + 1.
    The list is as long as the most set bits any element has (APoT: at most n)."""
    magnitude, sign = w.abs(), w.sign()
    parts = []
    while bool((magnitude > 0).any()):
        low = magnitude & -magnitude                   # lowest set bit
        present = low > 0
        shift = torch.where(present, torch.log2(low.clamp(min=1).double()).round().long(), 0)
        parts.append((shift, sign * present))
        magnitude = magnitude - low
    return parts


def shift_add_conv2d(a: torch.Tensor, w: torch.Tensor, stride=1, padding=0) -> torch.Tensor:
    """:func:`integer_conv2d` without a multiplier: each weight is split into its power-of-two parts
    (:func:`power_of_two_parts`), and every part adds or subtracts the activation shifted left by
    its exponent, on int64. a: int64 [N, C, H, W] >= 0; w: int64 [O, C, kh, kw]. Returns int64 [N, O, H', W']."""
    cols, shape = _unfold(a, w, stride, padding)          # [N, K, L]
    out = cols.new_zeros(len(a), len(w), cols.shape[2])
    for shift, sign in power_of_two_parts(w.reshape(len(w), -1)):          # [O, K] each
        for o in range(len(w)):
            shifted = cols << shift[o].view(1, -1, 1)                       # a · 2^shift, as shifts
            out[:, o] += (shifted * sign[o].view(1, -1, 1)).sum(1)          # ±: an add or a subtract
    return out.view(shape)


def accumulator_bound(a_max: int, w: torch.Tensor) -> int:
    """The largest |partial sum| a convolution of integer activations in [−a_max, a_max] with integer
    weights w [O, C / groups, kh, kw] can reach: a_max · max_o Σ |w[o]|."""
    return a_max * int(w.abs().flatten(1).sum(1).max())


def exact_integer_conv2d(a: torch.Tensor, w: torch.Tensor, stride=1, padding=0, bound: int | None = None,
                         dilation=1, groups: int = 1) -> torch.Tensor:
    """conv2d of integer activations a [N, C, H, W] (any dtype, signed or not) with integer weights
    w [O, C / groups, kh, kw], exact and fast: im2col (a copy) and one matrix product per group, in float32 when
    every partial sum stays below 2^24 (``bound``: :func:`accumulator_bound`), else in float64 (below 2^53). A
    matrix product of integers that stay in that range is exact in any summation order; no transform of the
    operands (Winograd, FFT) is possible on this path, as it would be inside ``F.conv2d``. Returns the integers
    as a float tensor [N, O, H', W'] (float32 or float64)."""
    if bound is None:
        bound = accumulator_bound(int(a.abs().max()), w)
    if bound >= FLOAT64_EXACT:
        raise ValueError(f"integer convolution bound {bound} exceeds float64's exact range")
    single = bound < FLOAT32_EXACT and torch.get_float32_matmul_precision() == "highest"
    return conv2d_by_matmul(a.to(torch.float32 if single else torch.float64), w, stride, padding, dilation, groups)


def fixed_order_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
                       padding=0, dilation=1) -> torch.Tensor:
    """conv2d of x [N, C, H, W] with weight [O, C, kh, kw], every output summed tap by tap in one order (input
    channel, kernel row, kernel column), each product and each partial sum rounded in x's dtype, then the
    bias added: the same bits on every machine. For the 8-bit first convolution (27 taps in a CIFAR ResNet,
    147 in an ImageNet one)."""
    cols, shape = _unfold(x, weight, stride, padding, x.dtype, dilation)              # [N, C·kh·kw, L], a copy
    o = len(weight)
    w = weight.reshape(o, -1).to(x.dtype)
    acc = cols[:, 0:1, :] * w[:, 0].view(1, o, 1)
    for k in range(1, w.shape[1]):
        acc.add_(cols[:, k:k + 1, :] * w[:, k].view(1, o, 1))
    if bias is not None:
        acc.add_(bias.to(x.dtype).view(1, o, 1))
    return acc.view(shape)


def fixed_order_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear of x [N, K] with weight [O, K], summed over k = 0, 1, … in that order in x's dtype, then the bias."""
    w = weight.to(x.dtype)
    acc = x[:, 0:1] * w[:, 0]
    for k in range(1, w.shape[1]):
        acc.add_(x[:, k:k + 1] * w[:, k])
    return acc if bias is None else acc.add_(bias.to(x.dtype))


def fixed_order_global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over H and W of x [N, C, H, W], positions added in row-major order, then divided: [N, C, 1, 1]."""
    flat = x.flatten(2)
    acc = flat[..., 0].clone()
    for k in range(1, flat.shape[2]):
        acc.add_(flat[..., k])
    return acc.div_(flat.shape[2]).view(*x.shape[:2], 1, 1)


def folded_scale(act_alpha: torch.Tensor, weight_alpha: torch.Tensor, bits: int, scheme: str = "apot",
                 terms: int | None = None, signed: bool = False) -> torch.Tensor:
    """s = α_a · α_w / (I_a,max · I_w,max), float64, one value per weight α (1 per layer, or C_out). A signed
    input's integers are a sign and a (b − 1)-bit magnitude, as the weights'."""
    tops = int(integer_levels(bits - signed, scheme, terms)[-1]) * int(integer_levels(bits - 1, scheme, terms)[-1])
    return (act_alpha.detach().double() * weight_alpha.detach().double() / tops).reshape(-1)


def in_order(sorted_values: torch.Tensor, listed: torch.Tensor) -> torch.Tensor:
    """``sorted_values`` (one per level of a set, ascending) rearranged to follow the order in which
    ``listed`` gives the set's levels (e.g. :func:`apot_utils.core.levels.projection_order`)."""
    return sorted_values[torch.searchsorted(listed.sort().values, listed)]




def shift_add_expression(a: int, w: int) -> str:
    """a · w written as the shifts and adds that compute it, e.g. ``5 · -6 = -(5 << 2) - (5 << 1) = -30``."""
    terms = [bit for bit in range(abs(w).bit_length()) if abs(w) >> bit & 1][::-1]
    sign = "-" if w < 0 else "+"
    body = " ".join(f"{sign} ({a} << {bit})" for bit in terms).removeprefix("+ ") if terms else "0"
    return f"{a} · {w} = {body.replace('- (', '-(', 1) if body.startswith('-') else body} = {a * w}"

