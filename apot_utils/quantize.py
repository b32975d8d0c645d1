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

import os
import warnings
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import nn

from . import kernels
from .levels import projection_order, weight_projection_order

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


def _checked_levels(levels: torch.Tensor, dtype: torch.dtype) -> tuple[float, ...]:
    """The levels as a tuple of ``dtype`` values (their order kept), after checking both."""
    if dtype not in _INT_VIEW:
        raise TypeError(f"project supports float32 and float64 inputs, got {dtype}")
    values = tuple(levels.to(dtype).tolist()) if levels.dim() == 1 else ()
    if len(values) < 2 or min(values) != 0 or max(values) != 1 or len(set(values)) != len(values):
        raise ValueError("levels must be a 1-D set of distinct levels from 0 to 1")
    return values


class _Decisions(NamedTuple):
    """Where the nearest level changes, for one level set, dtype and α (see :func:`_decisions`).

    thresholds: [L - 1] in the input's units, ascending: an input x gets the i-th sorted level
    (i = 0 .. L-1) where ``thresholds[i-1] <= x < thresholds[i]``. levels: [L], sorted. The
    bucket table serves the same decisions by lookup: bucket_key [3] = (shift, first key, last key), in
    the integer type of x's bit pattern; bucket = (x's bit pattern >> shift), clamped to the first and
    last key; the level is ``base[bucket] + (x >= bucket_threshold[bucket])`` ([buckets] each). A set
    whose table would exceed 2^22 buckets has none (the three are None) and is served by
    :func:`_search`, a binary search over the thresholds.
    """
    thresholds: torch.Tensor
    levels: torch.Tensor
    bucket_key: torch.Tensor
    bucket_threshold: torch.Tensor
    base: torch.Tensor

    @property
    def tree_tables(self) -> tuple[torch.Tensor, ...]:
        return (self.thresholds,)

    @property
    def lookup_tables(self) -> tuple[torch.Tensor, ...]:
        return self.bucket_key, self.bucket_threshold, self.base

    @property
    def has_table(self) -> bool:
        return self.bucket_key is not None


@lru_cache(maxsize=256)
def _decisions(values: tuple[float, ...], dtype: torch.dtype, device: torch.device, divisor: float | None = None):
    """The decision thresholds of :func:`project` for levels ``values`` (in their tie order).

    divisor: thresholds for inputs x that the caller would divide by ``divisor`` (α) first: the
    decisions are those for fl(x / divisor) in ``dtype``, so no division pass is needed. None: for x.

    A non-negative float's bit pattern, read as an integer, grows with its value, and so does the
    index of its nearest level (argmin over ``values`` in their order, the way the reference computes
    it): each threshold, the smallest value whose nearest level is the i-th or above, is found by
    bisection on the bit patterns between 0 and the top (1, or α). The bucket table uses the top bits
    of the pattern (exponent and the first m mantissa bits), m just large enough to give every
    threshold a bucket of its own.
    """
    int_dtype, mantissa = _INT_VIEW[dtype]
    given = torch.tensor(values, dtype=dtype)
    levels, order = given.sort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    alpha = torch.tensor(1.0 if divisor is None else divisor, dtype=dtype)

    def nearest(bits):     # index into the sorted levels of argmin over the given order (of x / α)
        x = bits.to(int_dtype).view(dtype)
        return rank[_nearest_index(x if divisor is None else x / alpha, given)]

    top = int(alpha.view(int_dtype))
    wanted = torch.arange(1, len(levels))
    lo, hi = torch.zeros_like(wanted), torch.full_like(wanted, top)    # invariant: nearest(hi) >= wanted
    while bool((hi > lo).any()):
        mid = lo + (hi - lo) // 2          # not (lo + hi) // 2: float64 bit patterns above 2^62 would overflow
        upper = nearest(mid) >= wanted
        hi, lo = torch.where(upper, mid, hi), torch.where(upper, lo, mid + 1)
    if not (bool((nearest(hi) == wanted).all()) and bool((nearest(hi - 1) == wanted - 1).all())):
        raise ValueError("level set too dense for exact thresholds: a level is nearest to no float")
    for shift in range(mantissa - 4, -1, -1):
        buckets = hi >> shift
        if bool((buckets[1:] > buckets[:-1]).all()):
            break
    thresholds = hi.to(int_dtype).view(dtype)
    first_key, last_key = int(buckets[0]), top >> shift
    if last_key - first_key >= 1 << 22:    # levels both tiny and close together (7 bits, n = 2): no table
        return _Decisions(thresholds.to(device), levels.to(device), None, None, None)
    keys = torch.arange(first_key, last_key + 1)
    base = torch.searchsorted(hi, keys << shift)           # thresholds below each bucket's start
    bucket_threshold = torch.full((keys.numel(),), float("nan"), dtype=dtype)   # NaN: no change in the bucket
    bucket_threshold[buckets - first_key] = thresholds
    bucket_key = torch.tensor([shift, first_key, last_key], dtype=int_dtype)
    return _Decisions(thresholds.to(device), levels.to(device), bucket_key.to(device),
                      bucket_threshold.to(device), base.to(torch.int32).to(device))


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
    (the decisions are folded into thresholds computed for that α).

    The result equals the argmin over the N×L distance table computed in x's precision, without
    building that table: comparisons with the L - 1 decision thresholds (:func:`_decisions`),
    memory O(N), independent of L. Large inputs run through a fused kernel compiled ahead of time
    (:mod:`apot_utils.kernels`; ``APOT_COMPILE=0`` turns it off): up to ``_TREE_MAX_LEVELS`` levels a
    binary search written as vector compares and selects (:func:`_select_tree`), above that a lookup
    in a bucket table (:func:`_lookup`, also the eager kernel); all give the same result.
    """
    values = _checked_levels(levels, x.dtype)
    key = None if divisor is None else float(divisor.detach().to(x.dtype))
    if key is not None and not (key > 0 and key != float("inf")):
        raise ValueError(f"divisor must be a finite positive number, got {key}")
    if _reference[0]:
        q = argmin_project((x if divisor is None else x / divisor).clamp(0, 1), levels)
        return q if scale is None else q * scale
    decisions = _decisions(values, x.dtype, x.device, key)
    outputs = decisions.levels if scale is None else decisions.levels * scale.to(x.dtype)
    return _run("project", x.reshape(-1), decisions, outputs).view_as(x)


_reference = [False]      # inside reference_formulation()


@contextmanager
def reference_formulation():
    """Inside the block the quantizers compute as the release's code did, the definition the fast path is
    tested against: :func:`project` is :func:`argmin_project` over the N×L table (after dividing by α and
    clipping), the training quantizer is :class:`ReferenceClippedProjection` (u and q kept for the backward),
    and :func:`apot_utils.layers.frozen_weights` quantizes the weights again in every forward. The values and
    gradients are the same bit for bit on any one machine (tests); memory and time are not (``benchmarks/``).
    Not thread-safe: it switches the whole process."""
    saved = _reference[0]
    _reference[0] = True
    try:
        yield
    finally:
        _reference[0] = saved


def reference_active() -> bool:
    """Whether :func:`reference_formulation` is in force."""
    return _reference[0]


_FUSED_MIN_NUMEL = 1 << 16
_TREE_MAX_LEVELS = 32      # up to here the select tree is faster than the lookup (benchmarks/bench_projection.py)


def _lookup(x: torch.Tensor, bucket_key: torch.Tensor, bucket_threshold: torch.Tensor, base: torch.Tensor,
            outputs: torch.Tensor) -> torch.Tensor:
    """x: 1-D. The level of every element from its bucket (:class:`_Decisions`): ``outputs[base + (x >= threshold)]``."""
    first = bucket_key[1]
    key = (x.view(bucket_key.dtype) >> bucket_key[0]).clamp_(first, bucket_key[2]).sub_(first)
    upper = x >= bucket_threshold.index_select(0, key)
    index = base.index_select(0, key)
    del key
    index += upper
    del upper
    return outputs.index_select(0, index).masked_fill_(x.isnan(), float("nan"))   # NaN stays NaN


def _search(x: torch.Tensor, thresholds: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """x: 1-D. The level of every element by ``searchsorted`` over the thresholds: the eager kernel of the
    sets too dense for a bucket table (:class:`_Decisions`); about log2(L) passes instead of one."""
    index = torch.searchsorted(thresholds, x.contiguous(), right=True).clamp_(max=outputs.numel() - 1)
    return outputs.index_select(0, index).masked_fill_(x.isnan(), float("nan"))   # NaN stays NaN


def _clip_search(x, thresholds, levels, alpha):
    return _clip_parts(_search, x, (thresholds,), levels, alpha)


def _select_tree(x: torch.Tensor, thresholds: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """x: 1-D. The level of every element by a binary search over the thresholds written as nested selects
    (L - 1 comparisons an element, no lookups, short dependency chains: compiled, one pass of vector compares
    and blends; eager it would take L passes)."""
    t = thresholds

    def between(lo: int, hi: int) -> torch.Tensor:      # the output where x lies between sorted levels lo and hi
        if lo == hi:
            return outputs[lo]
        mid = (lo + hi + 1) // 2
        return torch.where(x >= t[mid - 1], between(mid, hi), between(lo, mid - 1))

    return torch.where(x != x, x, between(0, t.shape[0]))     # NaN stays NaN (x != x vectorizes, isnan does not)


def _clip_parts(project_kernel, x: torch.Tensor, tables: tuple, levels: torch.Tensor, alpha: torch.Tensor):
    """x: 1-D activations. The activation quantizer's forward and all its backward needs, in one tensor:
    (α · q, code) with u = x / α, q = project(u) (u below 0 to 0, above 1 to 1) and ``code`` the slope
    of the output with respect to α where 0 <= u <= 1 (q - u, always finite), +inf where u > 1 (slope 1)
    and NaN below 0 or for NaN (slope 0): no gradient reaches x exactly where the code is not finite."""
    u = x / alpha
    q = project_kernel(u, *tables, levels)
    inside = (u >= 0) & (u <= 1)
    code = torch.where(inside, q - u, torch.where(u > 1, float("inf"), float("nan")))
    return q * alpha, code


def _clip_grads(grad: torch.Tensor, code: torch.Tensor):
    """The activation quantizer's backward from :func:`_clip_parts`' code: (gradient of x, per-element
    gradient of α) = (g · [0 <= u <= 1], g · slope), the same products as with a separate mask and slope."""
    inside = (code - code) == 0                  # finite (inf - inf and NaN - NaN are NaN); vectorizes
    slope = torch.where(inside, code, (code == float("inf")).to(code.dtype))
    return grad * inside.to(grad.dtype), grad * slope


def _clip_tree(x, thresholds, levels, alpha):
    return _clip_parts(_select_tree, x, (thresholds,), levels, alpha)


def _clip_lookup(x, bucket_key, bucket_threshold, base, levels, alpha):
    return _clip_parts(_lookup, x, (bucket_key, bucket_threshold, base), levels, alpha)


# name -> (kernel, the dimensions of its arguments that vary between calls; every other one is compiled in).
_N, _TABLE = {0: "n"}, {0: "buckets"}
_KERNELS = {"project tree": (_select_tree, (_N, None, None)),
            "project lookup": (_lookup, (_N, None, _TABLE, _TABLE, {0: "levels"})),
            "clip tree": (_clip_tree, (_N, None, None, None)),
            "clip lookup": (_clip_lookup, (_N, None, _TABLE, _TABLE, {0: "levels"}, None)),
            "clip grads": (_clip_grads, (_N, _N))}


def _kernel_for(kind: str, d: _Decisions) -> tuple[str, tuple[torch.Tensor, ...]]:
    """The fused kernel for ``kind`` ('project' or 'clip') and these decisions, and its tables: the select
    tree up to ``_TREE_MAX_LEVELS`` levels, the lookup above."""
    if len(d.levels) <= _TREE_MAX_LEVELS:
        return f"{kind} tree", d.tree_tables
    return f"{kind} lookup", d.lookup_tables


def _run(kind: str, x: torch.Tensor, d: _Decisions, *args):
    """The ``kind`` ('project' or 'clip') kernel on 1-D x: fused (:mod:`apot_utils.kernels`) for large inputs,
    the eager lookup otherwise (a set without a bucket table: always the eager search). args: the outputs of
    the sorted levels ('project'); levels and α ('clip')."""
    if not d.has_table:
        return (_search if kind == "project" else _clip_search)(x, d.thresholds, *args)
    if x.numel() >= _FUSED_MIN_NUMEL:
        name, tables = _kernel_for(kind, d)
        t = d.thresholds

        def probe():
            sweep = torch.linspace(-0.5, 1.5, 4093, dtype=t.dtype, device=t.device)
            special = t.new_tensor([float("inf"), -float("inf"), float("nan")])
            return torch.cat([x[:4096], t, torch.nextafter(t, torch.zeros_like(t)), sweep, special]), *tables, *args
        kernel = _fused(name, (x.device.type, x.dtype, len(d.levels)), probe)
        if kernel is not None:
            return kernel(x, *tables, *args)
    return _KERNELS[f"{kind} lookup"][0](x, *d.lookup_tables, *args)


def _run_clip_grads(grad: torch.Tensor, code: torch.Tensor):
    """:func:`_clip_grads` on 1-D tensors, fused for large inputs."""
    if grad.numel() >= _FUSED_MIN_NUMEL:
        def probe():
            return (torch.cat([grad[:4096], grad.new_tensor([1.0, -2.0, float("nan"), -1.0, 3.0, float("inf")])]),
                    torch.cat([code[:4096], code.new_tensor([float("inf"), float("nan"), 0.0, -0.0, -0.25, 0.25])]))
        kernel = _fused("clip grads", (grad.device.type, grad.dtype), probe)
        if kernel is not None:
            return kernel(grad, code)
    return _clip_grads(grad, code)


def _fusing() -> bool:
    return os.environ.get("APOT_COMPILE", "1") != "0"


def build_pending(levels: torch.Tensor, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> bool:
    """Whether the next large projection onto ``levels`` (in ``dtype`` on ``device``) will first build its fused
    kernel: a one-off wait on a machine, about 15 s (:mod:`apot_utils.kernels`; ``APOT_COMPILE=0``: never)."""
    if not _fusing():
        return False
    d = _decisions(_checked_levels(levels, dtype), dtype, torch.device(device))
    if not d.has_table:
        return False
    name, tables = _kernel_for("project", d)
    example = torch.zeros(2, dtype=dtype, device=d.levels.device)
    return kernels.pending(_KERNELS[name][0], (example, *tables, d.levels), _KERNELS[name][1])


_checked: dict[tuple, object] = {}     # (kernel, device type, dtype, levels) -> fused kernel, or None


def _same(a, b) -> bool:
    """Equal tensors (or tuples of them), NaN equal to NaN."""
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _fused(name: str, kind: tuple, probe):
    """The kernel ``name`` compiled ahead of time (:func:`apot_utils.kernels.load`: built once per machine, then
    loaded), checked against itself run eagerly on ``probe()`` (its arguments, chosen by the caller: the input's
    first values, the thresholds, ±inf, NaN) the first time a process meets each ``kind`` of input (device,
    dtype, number of levels). None where fusing is off (``APOT_COMPILE=0``), fails, or disagrees (with a warning)."""
    if not _fusing():
        return None
    key = (name, *kind)
    if key not in _checked:
        _checked[key] = None
        fn, dynamic = _KERNELS[name]
        try:
            args = probe()
            kernel = kernels.load(fn, args, dynamic)
            if _same(kernel(*args), fn(*args)):
                _checked[key] = kernel
            else:
                warnings.warn(f"the fused kernel ({name}) disagreed with the eager one; using eager kernels")
        except Exception as error:  # no C++ compiler, no Triton: say why once, stay eager
            warnings.warn(f"the fused kernel ({name}) is unavailable ({type(error).__name__}: {error}); "
                          "using eager kernels")
    return _checked[key]


class _ClippedProjection(torch.autograd.Function):
    """α · project(clip(x / α)) with the straight-through / reparameterized gradients.

    The forward keeps only what the backward needs, the per-element slope of the output with respect to
    α (q − u inside the clipping range, sign(u) or 1 beyond it, 0 below 0 for activations): for
    activations one float an element, the code of :func:`_clip_parts`, which also marks where the input
    gradient is masked; for weights the slope and, with ``clip_grad``, a boolean mask. 4 bytes an element
    (5 for clipped weight gradients) instead of u and q, 8 bytes."""

    @staticmethod
    def forward(ctx, x, alpha, levels, signed: bool, grad_scale: float, clip_grad: bool = False):
        if signed:
            u = x / alpha
            clipped = u.clamp(-1, 1)
            q = project(clipped.abs(), levels).mul_(clipped.sign())
            outside = u.abs() > 1
            slope = torch.where(outside, u.sign(), q - u)
            keep = (u.abs() <= 1) if clip_grad else None
            out = q * alpha
        else:
            d = _decisions(_checked_levels(levels, x.dtype), x.dtype, x.device)
            out, code = _run("clip", x.detach().reshape(-1), d, d.levels, alpha.detach())
            out, slope, keep = out.view_as(x), code.view_as(x), None
        ctx.save_for_backward(slope, keep)
        ctx.grad_scale, ctx.alpha_shape, ctx.signed = grad_scale, tuple(alpha.shape), signed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        slope, keep = ctx.saved_tensors
        if ctx.signed:
            grad_x = grad_out if keep is None else grad_out * keep
            per_element = grad_out * slope
        else:        # slope: the code of _clip_parts
            grad_x, per_element = (g.view_as(slope) for g in _run_clip_grads(grad_out.detach().reshape(-1),
                                                                               slope.reshape(-1)))
        grad_alpha = per_element.sum() if ctx.alpha_shape == () else per_element.sum_to_size(ctx.alpha_shape)
        return grad_x, grad_alpha.mul(ctx.grad_scale), None, None, None, None


class ReferenceClippedProjection(torch.autograd.Function):
    """The release's formulation of the quantizer, kept to check and to time :class:`_ClippedProjection`
    against: :func:`argmin_project` (memory O(N·L)), u = x / α and q kept for the backward, the masks and
    the slope recomputed there. The same values and gradients bit for bit (``tests/test_gradients.py``)."""

    @staticmethod
    def forward(ctx, x, alpha, levels, signed: bool, grad_scale: float, clip_grad: bool = False):
        u = x / alpha
        if signed:
            clipped = u.clamp(-1, 1)
            q = argmin_project(clipped.abs(), levels) * clipped.sign()
        else:
            q = argmin_project(u.clamp(0, 1), levels)
        ctx.save_for_backward(u, q)
        ctx.signed, ctx.grad_scale, ctx.clip_grad, ctx.alpha_shape = signed, grad_scale, clip_grad, tuple(alpha.shape)
        return q * alpha

    @staticmethod
    def backward(ctx, grad_out):
        u, q = ctx.saved_tensors
        if ctx.signed:
            grad_x = grad_out * (u.abs() <= 1) if ctx.clip_grad else grad_out
            slope = torch.where(u.abs() > 1, u.sign(), q - u)
        else:
            inside = (u >= 0) & (u <= 1)
            grad_x = grad_out * inside
            slope = torch.where(inside, q - u, (u > 1).to(u.dtype))
        per_element = grad_out * slope
        grad_alpha = per_element.sum() if ctx.alpha_shape == () else per_element.sum_to_size(ctx.alpha_shape)
        return grad_x, grad_alpha.mul(ctx.grad_scale), None, None, None, None


def _quantizer() -> type[torch.autograd.Function]:
    """The training quantizer in force: the fused one, or the release's under :func:`reference_formulation`."""
    return ReferenceClippedProjection if _reference[0] else _ClippedProjection


def quantize_weight(w_normalized: torch.Tensor, alpha: torch.Tensor, magnitudes: torch.Tensor,
                    grad_scale: float = 1.0, clip_grad: bool = False) -> torch.Tensor:
    """Signed quantization of already normalized weights: α · sign(c) · project(|c|), c = clip(w/α, -1, 1).
    ``clip_grad``: no gradient to weights beyond ±α (default: straight through everywhere)."""
    return _quantizer().apply(w_normalized, alpha, magnitudes, True, grad_scale, clip_grad)


def quantize_activation(x: torch.Tensor, alpha: torch.Tensor, levels: torch.Tensor,
                        grad_scale: float = 1.0) -> torch.Tensor:
    """Unsigned quantization: α · project(clip(x/α, 0, 1)).

    Without autograd (inference) the division by α and the product with α are folded into the
    lookup (a table for each α): one pass over x instead of five, the same values.
    """
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        return _quantizer().apply(x, alpha, levels, False, grad_scale)
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
