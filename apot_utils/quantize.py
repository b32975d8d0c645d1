"""Projection to a level set and the APoT weight and activation quantizers.

Shapes: quantizers take and return tensors of any shape; α (``alpha``) is a 0-d tensor in
the units of the input (weights after normalization, activations as they are), or for weights
a tensor that broadcasts against them (one α per output channel: [C_out, 1, 1, 1]), whose
gradient is then summed to its shape.

Forward: ``u = x / α``; clip ``u`` to [-1, 1] (weights) or [0, 1] (activations); project it
to the nearest level (weights: the magnitude, sign apart); multiply back by α.
Backward (the paper's reparameterized clipping function, as in the release):
- input: straight through. Weights pass the gradient everywhere (the CIFAR-10 release does not
  clip weight gradients; ``clip_grad=True`` zeroes it where |u| > 1, as the ImageNet release
  does above 2 bits); activations pass it where 0 <= u <= 1.
- α: ``Σ g · (q(u) - u)`` where u is inside the clipping range, ``Σ g · sign(u)`` where
  it is clipped (0 below 0 for activations), times the optional ``grad_scale``.
"""
from __future__ import annotations

import logging
import os
import warnings
from functools import lru_cache

import torch
from torch import nn

from .levels import level_set, projection_order, weight_projection_order

_INT_VIEW = {torch.float32: (torch.int32, 23), torch.float64: (torch.int64, 52)}


def argmin_project(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The reference definition: ``levels[argmin_j |x - levels[j]|]`` over the full N×L table.

    Memory O(N·L): use it to check :func:`project`, not in models.
    """
    levels = levels.to(dtype=x.dtype, device=x.device)
    flat = x.reshape(-1, 1)
    return levels[(flat - levels).abs().argmin(dim=1)].view_as(x)


def _nearest_index(x: torch.Tensor, levels: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    return torch.cat([(x[i:i + rows, None] - levels).abs().argmin(dim=1)
                      for i in range(0, x.numel(), rows)])


@lru_cache(maxsize=256)
def _lookup_table(values: tuple[float, ...], dtype: torch.dtype, device: torch.device, divisor: float | None = None):
    """Bucket table for :func:`project`; ``values``: the levels in their tie order.

    divisor: a table for inputs x that the caller would divide by ``divisor`` (α) first: its decisions
    are those for fl(x / divisor) in ``dtype`` (every bisection step evaluates exactly that), so the
    lookup gives the same level without the division pass. None: for x itself.

    A non-negative float's bit pattern, read as an integer, grows with its value; its top bits
    (exponent and the first m mantissa bits) name a bucket. The table is refined until every
    bucket of [0, 1] holds at most one change of nearest level; for each bucket it stores the
    nearest level at its start (``base``, an index into the sorted levels) and the smallest value
    in it whose nearest level is the next one (``threshold``, found by bisection on the bit
    patterns with the argmin rule over ``values`` in their given order; NaN where the bucket
    holds no change, so that no comparison, not even with +inf, steps past the top level).
    """
    int_dtype, mantissa = _INT_VIEW[dtype]
    given = torch.tensor(values, dtype=dtype)
    levels, order = given.sort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    alpha = torch.tensor(1.0 if divisor is None else divisor, dtype=dtype)

    def nearest(x):          # index into the sorted levels of argmin over the given order (of x / α)
        return rank[_nearest_index(x if divisor is None else x / alpha, given)]

    top = int(alpha.view(int_dtype))
    # Values below a quarter of the smallest positive level all go to 0: one bucket for them.
    floor_bits = int((levels[1] * alpha / 4).view(int_dtype))
    for m in range(4, mantissa):
        shift = mantissa - m
        keys = torch.arange(floor_bits >> shift, (top >> shift) + 1, dtype=torch.int64)
        first = (keys << shift).to(int_dtype)
        first[0] = 0
        last = (((keys + 1) << shift) - 1).clamp(max=top).to(int_dtype)
        lo_idx = nearest(first.view(dtype))
        hi_idx = nearest(last.view(dtype))
        if int((hi_idx - lo_idx).max()) <= 1:
            break
    else:
        raise ValueError("level set too dense for a projection table")
    flips = (hi_idx > lo_idx).nonzero().squeeze(1)
    lo, hi = first[flips].long(), last[flips].long()      # invariant: nearest(hi) is the next level
    while bool((hi > lo).any()):
        mid = lo + (hi - lo) // 2          # not (lo + hi) // 2: float64 bit patterns above 2^62 would overflow
        upper = nearest(mid.to(int_dtype).view(dtype)) > lo_idx[flips]
        hi, lo = torch.where(upper, mid, hi), torch.where(upper, lo, mid + 1)
    threshold = torch.full((keys.numel(),), float("nan"), dtype=dtype)
    threshold[flips] = hi.to(int_dtype).view(dtype)
    return (shift, int(keys[0]), int(keys[-1]), threshold.to(device),
            lo_idx.to(torch.int32).to(device), levels.to(device))


def project(x: torch.Tensor, levels: torch.Tensor, scale: torch.Tensor | None = None,
            divisor: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest level for every element: ``levels[argmin_j |x - levels[j]|]``, bit for bit.

    x: float32 or float64 tensor of any shape. Values below 0 (and -inf) go to 0, above 1 (and
    +inf) to 1; NaN stays NaN. levels: 1-D, distinct, from 0 to 1 (a set of
    :mod:`apot_utils.levels`), cast to x's dtype; **their order is the tie order**: a value
    exactly between two levels goes to the one listed first, as argmin's first index does
    (sorted levels: ties to the lower one; :func:`apot_utils.levels.projection_order`: the
    release's choice). scale: optional 0-d tensor; the result is then ``levels[...] * scale``,
    the same values as multiplying afterwards, in the same pass. divisor: optional positive 0-d
    tensor α; the result is then that of ``project(x / α, ...)``, bit for bit, without the division
    (the decisions are folded into a table built for that α).

    The result equals the argmin over the N×L distance table computed in x's precision, without
    building that table: three lookups into a small per-set table (:func:`_lookup_table`),
    memory O(N), independent of L. Large inputs run through a kernel fused by ``torch.compile``
    where it is available (same integer arithmetic, same result; ``APOT_COMPILE=0`` turns it off).
    """
    if x.dtype not in _INT_VIEW:
        raise TypeError(f"project supports float32 and float64 inputs, got {x.dtype}")
    values = tuple(levels.to(x.dtype).tolist()) if levels.dim() == 1 else ()
    if len(values) < 2 or min(values) != 0 or max(values) != 1 or len(set(values)) != len(values):
        raise ValueError("levels must be a 1-D set of distinct levels from 0 to 1")
    key = None if divisor is None else float(divisor.detach().to(x.dtype))
    if key is not None and not (key > 0 and key != float("inf")):
        raise ValueError(f"divisor must be a finite positive number, got {key}")
    shift, first_key, last_key, threshold, base, table_values = _lookup_table(values, x.dtype, x.device, key)
    if scale is not None:
        table_values = table_values * scale.to(x.dtype)
    kernel = _lookup
    if x.numel() >= _COMPILE_MIN_NUMEL and _compiled_lookup(x.device.type) is not None:
        kernel = _compiled_lookup(x.device.type)
    return kernel(x.contiguous(), shift, first_key, last_key, threshold, base, table_values)


_COMPILE_MIN_NUMEL = 1 << 16


def _lookup(x, shift: int, first_key: int, last_key: int, threshold, base, values):
    key = (x.view(_INT_VIEW[x.dtype][0]) >> shift).clamp_(first_key, last_key).sub_(first_key).view(-1)
    upper = x.reshape(-1) >= threshold.index_select(0, key)
    index = base.index_select(0, key)
    del key
    index += upper
    del upper
    return values.index_select(0, index).view_as(x).masked_fill_(x.isnan(), float("nan"))   # NaN stays NaN


def compile_pending(device_type: str) -> bool:
    """Whether the next large projection on ``device_type`` will first compile the fused kernel
    (a one-off wait of several seconds a process; ``APOT_COMPILE=0`` turns compiling off)."""
    if os.environ.get("APOT_COMPILE", "1") == "0":
        return False
    return device_type not in _compiled_devices


_compiled_devices: set[str] = set()     # where _compiled_lookup has run (and compiled)


@lru_cache(maxsize=None)
def _compiled_lookup(device_type: str):
    """``_lookup`` fused into one kernel by torch.compile: the same integer and comparison
    arithmetic, so the same result. None where it is turned off or cannot be built."""
    if os.environ.get("APOT_COMPILE", "1") == "0":
        return None
    _compiled_devices.add(device_type)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" on CPUs
    kernel = torch.compile(_lookup, dynamic=True)
    probe = torch.linspace(-0.5, 1.5, 1 << 16, device=device_type)
    table = _lookup_table(tuple(level_set(3).tolist()), torch.float32, probe.device)
    try:
        if torch.equal(kernel(probe, *table), _lookup(probe, *table)):
            return kernel
        warnings.warn("the compiled projection disagreed with the eager one; using eager kernels")
    except Exception as error:  # no C++ compiler or Triton: say why once, stay eager
        warnings.warn(f"torch.compile unavailable for the projection ({type(error).__name__}: {error}); "
                      "using eager kernels")
    return None


class _ClippedProjection(torch.autograd.Function):
    """α · project(clip(x / α)) with the straight-through / reparameterized gradients.

    The forward keeps only what the backward needs: the per-element slope of the output with respect
    to α (q − u inside the clipping range, sign(u) or 1 beyond it, 0 below 0 for activations) and,
    where the input gradient is masked, a boolean mask: 5 bytes an element (4 for weights without
    gradient clipping) instead of u and q, 8 bytes."""

    @staticmethod
    def forward(ctx, x, alpha, levels, signed: bool, grad_scale: float, clip_grad: bool = False):
        u = x / alpha
        if signed:
            clipped = u.clamp(-1, 1)
            q = project(clipped.abs(), levels).mul_(clipped.sign())
            outside = u.abs() > 1
            slope = torch.where(outside, u.sign(), q - u)
            keep = (u.abs() <= 1) if clip_grad else None
        else:
            q = project(u, levels)   # project maps u < 0 to 0 and u > 1 to 1: the clip
            keep = (u >= 0) & (u <= 1)
            slope = torch.where(keep, q - u, (u > 1).to(u.dtype))
        ctx.save_for_backward(slope, keep)
        ctx.grad_scale, ctx.alpha_shape = grad_scale, tuple(alpha.shape)
        return q * alpha

    @staticmethod
    def backward(ctx, grad_out):
        slope, keep = ctx.saved_tensors
        grad_x = grad_out if keep is None else grad_out * keep
        per_element = grad_out * slope
        grad_alpha = per_element.sum() if ctx.alpha_shape == () else per_element.sum_to_size(ctx.alpha_shape)
        return grad_x, grad_alpha.mul(ctx.grad_scale), None, None, None, None


def quantize_weight(w_normalized: torch.Tensor, alpha: torch.Tensor, magnitudes: torch.Tensor,
                    grad_scale: float = 1.0, clip_grad: bool = False) -> torch.Tensor:
    """Signed quantization of already normalized weights: α · sign(c) · project(|c|), c = clip(w/α, -1, 1).
    ``clip_grad``: no gradient to weights beyond ±α (default: straight through everywhere)."""
    return _ClippedProjection.apply(w_normalized, alpha, magnitudes, True, grad_scale, clip_grad)


def quantize_activation(x: torch.Tensor, alpha: torch.Tensor, levels: torch.Tensor,
                        grad_scale: float = 1.0) -> torch.Tensor:
    """Unsigned quantization: α · project(clip(x/α, 0, 1)).

    Without autograd (inference) the division by α and the product with α are folded into the
    lookup (a table for each α): one pass over x instead of five, the same values.
    """
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        return _ClippedProjection.apply(x, alpha, levels, False, grad_scale)
    return project(x, levels, scale=alpha.detach(), divisor=alpha)


def normalize_weight(w: torch.Tensor, stats_grad: bool = True) -> torch.Tensor:
    """``(w - mean) / std`` over the whole tensor (unbiased std).

    stats_grad: differentiate through the mean and std (the ImageNet release); False treats them
    as constants, as the CIFAR-10 release's ``weight.data.mean()`` / ``weight.data.std()`` do.
    The forward values are the same either way.
    """
    mean, std = (w.mean(), w.std()) if stats_grad else (w.detach().mean(), w.detach().std())
    return (w - mean) / std


def eight_bit_codes(w: torch.Tensor) -> torch.Tensor:
    """The 8-bit layers' integer codes ``round(w / max(w) · 127)`` (w's dtype, no gradient)."""
    w = w.detach()
    return w.div(w.max()).mul(127).round()


def quantize_8bit(w: torch.Tensor) -> torch.Tensor:
    """8-bit first/last layer weights: ``eight_bit_codes(w) / 127 · max(w)``, straight through."""
    wq = eight_bit_codes(w).div(127).mul(w.detach().max())
    return (wq - w).detach() + w


class WeightQuantizer(nn.Module):
    """Normalizes and quantizes a weight tensor with a learnable clipping threshold α.

    bits: 2..8 (sign included; 2 bits = ternary {-α, 0, α}). scheme: 'apot', 'pot' or 'uniform'.
    terms: additive terms of the (bits - 1)-bit magnitude set (APoT only).
    """

    def __init__(self, bits: int, scheme: str = "apot", terms: int | None = None,
                 alpha: float = 3.0, grad_scale: float = 1.0):
        super().__init__()
        self.register_buffer("levels", weight_projection_order(bits, scheme, terms), persistent=False)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.grad_scale = grad_scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return quantize_weight(normalize_weight(w), self.alpha, self.levels, self.grad_scale)


class ActivationQuantizer(nn.Module):
    """Quantizes non-negative activations to the b-bit set with a learnable clipping threshold α."""

    def __init__(self, bits: int, scheme: str = "apot", terms: int | None = None,
                 alpha: float = 8.0, grad_scale: float = 1.0):
        super().__init__()
        self.register_buffer("levels", projection_order(bits, scheme, terms), persistent=False)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.grad_scale = grad_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_activation(x, self.alpha, self.levels, self.grad_scale)
