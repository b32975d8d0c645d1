"""The fast path: projection onto a level set by decision thresholds, run through the fused kernels of
:mod:`apot_utils.fast.kernels` (compiled ahead of time by :mod:`apot_utils.fast.aot`), and the training
quantizer built on it, :class:`FusedClippedProjection`. Everything here equals the readable reference
(:mod:`apot_utils.core.reference`) bit for bit, values and gradients (``tests/test_gradients.py``,
``tests/test_quantize.py``); inside :func:`apot_utils.core.reference.reference_formulation`, :func:`project`
computes by the reference itself.

Switches: ``APOT_COMPILE=0`` in the environment keeps every kernel eager (no compiled package is built or
loaded); ``APOT_KERNEL_BUILD=wait`` builds a missing package before its first use returns instead of when the
process ends (:func:`apot_utils.fast.aot.build_mode`); :func:`kernel_variants` gives each kernel on its own
(benchmarks).
"""
from __future__ import annotations

import os
import warnings
from functools import lru_cache
from typing import Callable, NamedTuple

import torch

from ..core.reference import nearest_level, reference_active
from . import aot
from .kernels import KERNELS, clip_grads, clip_search, search

_INT_VIEW = {torch.float32: (torch.int32, 23), torch.float64: (torch.int64, 52)}


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


class Decisions(NamedTuple):
    """Where the nearest level changes, for one level set, dtype and α (see :func:`decisions`).

    thresholds: [L - 1] in the input's units, ascending: an input x gets the i-th sorted level
    (i = 0 .. L-1) where ``thresholds[i-1] <= x < thresholds[i]``. levels: [L], sorted. The
    bucket table serves the same decisions by lookup: bucket_key [3] = (shift, first key, last key), in
    the integer type of x's bit pattern; bucket = (x's bit pattern >> shift), clamped to the first and
    last key; the level is ``base[bucket] + (x >= bucket_threshold[bucket])`` ([buckets] each). A set
    whose table would exceed 2^22 buckets has none (the three are None) and is served by
    :func:`apot_utils.fast.kernels.search`, a binary search over the thresholds.
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
def decisions(values: tuple[float, ...], dtype: torch.dtype, device: torch.device, divisor: float | None = None):
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
        return Decisions(thresholds.to(device), levels.to(device), None, None, None)
    keys = torch.arange(first_key, last_key + 1)
    base = torch.searchsorted(hi, keys << shift)           # thresholds below each bucket's start
    bucket_threshold = torch.full((keys.numel(),), float("nan"), dtype=dtype)   # NaN: no change in the bucket
    bucket_threshold[buckets - first_key] = thresholds
    bucket_key = torch.tensor([shift, first_key, last_key], dtype=int_dtype)
    return Decisions(thresholds.to(device), levels.to(device), bucket_key.to(device),
                      bucket_threshold.to(device), base.to(torch.int32).to(device))


def project(x: torch.Tensor, levels: torch.Tensor, scale: torch.Tensor | None = None,
            divisor: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest level for every element: ``levels[argmin_j |x - levels[j]|]``, bit for bit.

    x: float32 or float64 tensor of any shape. Values below 0 (and -inf) go to 0, above 1 (and
    +inf) to 1; NaN stays NaN. levels: 1-D, distinct, from 0 to 1 (a set of
    :mod:`apot_utils.core.levels`), cast to x's dtype; **their order is the tie order**: a value
    exactly between two levels goes to the one listed first, as argmin's first index does
    (sorted levels: ties to the lower one; :func:`apot_utils.core.levels.projection_order`: the
    release's choice). scale: optional 0-d tensor; the result is then ``levels[...] * scale``,
    the same values as multiplying afterwards, in the same pass. divisor: optional positive 0-d
    tensor α; the result is then that of ``project(x / α, ...)``, bit for bit, without the division
    (the decisions are folded into thresholds computed for that α).

    The result equals the argmin over the N×L distance table computed in x's precision, without
    building that table: comparisons with the L - 1 decision thresholds (:func:`decisions`),
    memory O(N), independent of L. Large inputs run through a fused kernel compiled ahead of time
    (:mod:`apot_utils.fast.aot`; ``APOT_COMPILE=0`` turns it off): up to ``_TREE_MAX_LEVELS`` levels a
    binary search written as vector compares and selects (:func:`~apot_utils.fast.kernels.select_tree`), above that a lookup
    in a bucket table (:func:`~apot_utils.fast.kernels.lookup`, also the eager kernel); all give the same result.
    """
    values = _checked_levels(levels, x.dtype)
    key = None if divisor is None else float(divisor.detach().to(x.dtype))
    if key is not None and not (key > 0 and key != float("inf")):
        raise ValueError(f"divisor must be a finite positive number, got {key}")
    if reference_active():
        q = nearest_level((x if divisor is None else x / divisor).clamp(0, 1), levels)
        return q if scale is None else q * scale
    d = decisions(values, x.dtype, x.device, key)
    outputs = d.levels if scale is None else d.levels * scale.to(x.dtype)
    return _run("project", x.reshape(-1), d, outputs).view_as(x)


_FUSED_MIN_NUMEL = 1 << 16
_TREE_MAX_LEVELS = 32      # up to here the select tree is faster than the lookup (benchmarks/bench_projection.py)


def _kernel_for(kind: str, d: Decisions) -> tuple[str, tuple[torch.Tensor, ...]]:
    """The fused kernel for ``kind`` ('project' or 'clip') and these decisions, and its tables: the select
    tree up to ``_TREE_MAX_LEVELS`` levels, the lookup above."""
    if len(d.levels) <= _TREE_MAX_LEVELS:
        return f"{kind} tree", d.tree_tables
    return f"{kind} lookup", d.lookup_tables


def _run(kind: str, x: torch.Tensor, d: Decisions, *args):
    """The ``kind`` ('project' or 'clip') kernel on 1-D x: fused (:mod:`apot_utils.fast.aot`) for large inputs,
    the eager lookup otherwise (a set without a bucket table: always the eager search). args: the outputs of
    the sorted levels ('project'); levels and α ('clip')."""
    if not d.has_table:
        return (search if kind == "project" else clip_search)(x, d.thresholds, *args)
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
    return KERNELS[f"{kind} lookup"][0](x, *d.lookup_tables, *args)


def _run_clip_grads(grad: torch.Tensor, code: torch.Tensor):
    """:func:`~apot_utils.fast.kernels.clip_grads` on 1-D tensors, fused for large inputs."""
    if grad.numel() >= _FUSED_MIN_NUMEL:
        def probe():
            return (torch.cat([grad[:4096], grad.new_tensor([1.0, -2.0, float("nan"), -1.0, 3.0, float("inf")])]),
                    torch.cat([code[:4096], code.new_tensor([float("inf"), float("nan"), 0.0, -0.0, -0.25, 0.25])]))
        kernel = _fused("clip grads", (grad.device.type, grad.dtype), probe)
        if kernel is not None:
            return kernel(grad, code)
    return clip_grads(grad, code)


def _fusing() -> bool:
    return os.environ.get("APOT_COMPILE", "1") != "0"


def build_pending(levels: torch.Tensor, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> bool:
    """Whether this machine has yet to build the fused kernel of the next large projection onto ``levels`` (in
    ``dtype`` on ``device``): once a machine, about 15 s, on a CPU by another process when this one ends (eager
    kernels until then) or before the first use returns (:func:`apot_utils.fast.aot.build_mode`;
    ``APOT_COMPILE=0``: never)."""
    if not _fusing():
        return False
    d = decisions(_checked_levels(levels, dtype), dtype, torch.device(device))
    if not d.has_table:
        return False
    name, tables = _kernel_for("project", d)
    example = torch.zeros(2, dtype=dtype, device=d.levels.device)
    return aot.pending(KERNELS[name][0], (example, *tables, d.levels), KERNELS[name][1])


_checked: dict[tuple, object] = {}     # (kernel, device type, dtype, levels) -> fused kernel, or None


def _same(a, b) -> bool:
    """Equal tensors (or tuples of them), NaN equal to NaN."""
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _fused(name: str, signature: tuple, probe):
    """The kernel ``name`` compiled ahead of time (:mod:`apot_utils.fast.aot`: built once per machine, then
    loaded), checked against itself run eagerly on ``probe()`` (its arguments, chosen by the caller: the input's
    first values, the thresholds, ±inf, NaN) the first time a process meets each ``kind`` of input (device,
    dtype, number of levels). A CPU package not built yet is, by default, left to a build when this process ends
    (:func:`~apot_utils.fast.aot.build_mode`): this process computes eagerly (the same values) and returns None.
    None also where fusing is off (``APOT_COMPILE=0``), where the kernel fails, or disagrees (with a warning)."""
    if not _fusing():
        return None
    key = (name, *signature)
    if key not in _checked:
        _checked[key] = None
        fn, dynamic = KERNELS[name]
        try:
            args = probe()
            path = aot.package_path(fn, args, dynamic)
            marker = aot.failure_marker(path)
            if marker.exists():
                raise RuntimeError(f"its build failed on this machine: {marker.read_text().strip()} (delete {marker} "
                                   "to try again)")
            if not path.exists() and aot.defers_build(args[0].device.type):
                aot.build_at_exit(fn, args, dynamic)
                return None
            kernel = aot.load(fn, args, dynamic)
            if _same(kernel(*args), fn(*args)):
                _checked[key] = kernel
            else:
                warnings.warn(f"the fused kernel ({name}) disagreed with the eager one; using eager kernels")
        except Exception as error:  # no C++ compiler, no Triton: say why once, stay eager
            warnings.warn(f"the fused kernel ({name}) is unavailable ({type(error).__name__}: {error}); "
                          "using eager kernels")
    return _checked[key]


class FusedClippedProjection(torch.autograd.Function):
    """α · project(clip(x / α)) with the straight-through / reparameterized gradients.

    The forward keeps only what the backward needs, the per-element slope of the output with respect to
    α (q − u inside the clipping range, sign(u) or 1 beyond it, 0 below 0 for activations): for
    activations one float an element, the code of :func:`~apot_utils.fast.kernels.clip_parts`, which also marks where the input
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
            d = decisions(_checked_levels(levels, x.dtype), x.dtype, x.device)
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
        else:        # slope: the code of kernels.clip_parts
            grad_x, per_element = (g.view_as(slope) for g in _run_clip_grads(grad_out.detach().reshape(-1),
                                                                               slope.reshape(-1)))
        grad_alpha = per_element.sum() if ctx.alpha_shape == () else per_element.sum_to_size(ctx.alpha_shape)
        return grad_x, grad_alpha.mul(ctx.grad_scale), None, None, None, None


def kernel_variants(levels: torch.Tensor, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each kernel :func:`project` chooses between, on its own, as a function of 1-D ``x`` (no α): 'tree' and
    'lookup', compiled ahead of time (built here if need be), and 'eager', the eager lookup. For benchmarks:
    all return the same values."""
    d = decisions(_checked_levels(levels, dtype), dtype, torch.device(device))
    variants = {}
    for kind, tables in (("tree", d.tree_tables), ("lookup", d.lookup_tables)):
        fn, dynamic = KERNELS[f"project {kind}"]
        compiled = aot.load(fn, (torch.zeros(2, dtype=dtype, device=d.levels.device), *tables, d.levels), dynamic)
        variants[kind] = lambda x, compiled=compiled, tables=tables: compiled(x, *tables, d.levels)
    variants["eager"] = lambda x: KERNELS["project lookup"][0](x, *d.lookup_tables, d.levels)
    return variants
