"""The bodies of the fused kernels, and nothing else: :mod:`apot_utils.fast.aot` names each compiled
package after the kernel's own source and that of the functions here it calls, so editing the quantizer,
the layers or a docstring never rebuilds a kernel.

Every kernel takes 1-D tensors. The tables come from :class:`apot_utils.fast.projection.Decisions`:
``thresholds`` [L − 1] ascending (the smallest input whose nearest level is the i-th sorted level or
above), or the bucket table ``bucket_key`` [3] = (shift, first key, last key), ``bucket_threshold``
and ``base`` [buckets]. ``outputs`` [L]: what each sorted level maps to (the level, or level · α).
NaN stays NaN everywhere.
"""
from __future__ import annotations

import torch


def lookup(x: torch.Tensor, bucket_key: torch.Tensor, bucket_threshold: torch.Tensor, base: torch.Tensor,
           outputs: torch.Tensor) -> torch.Tensor:
    """The level of every element from its bucket: ``outputs[base + (x >= threshold)]``, the bucket being
    x's bit pattern shifted right by ``bucket_key[0]`` and clamped to the table."""
    first = bucket_key[1]
    key = (x.view(bucket_key.dtype) >> bucket_key[0]).clamp_(first, bucket_key[2]).sub_(first)
    upper = x >= bucket_threshold.index_select(0, key)
    index = base.index_select(0, key)
    del key
    index += upper
    del upper
    return outputs.index_select(0, index).masked_fill_(x.isnan(), float("nan"))


def search(x: torch.Tensor, thresholds: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """The level of every element by ``searchsorted`` over the thresholds: for the sets too dense for a
    bucket table; about log2(L) passes instead of one."""
    index = torch.searchsorted(thresholds, x.contiguous(), right=True).clamp_(max=outputs.numel() - 1)
    return outputs.index_select(0, index).masked_fill_(x.isnan(), float("nan"))


def select_tree(x: torch.Tensor, thresholds: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """The level of every element by a binary search over the thresholds written as nested selects
    (L − 1 comparisons an element, no lookups: compiled, one pass of vector compares and blends)."""
    t = thresholds

    def between(lo: int, hi: int) -> torch.Tensor:      # the output where x lies between sorted levels lo and hi
        if lo == hi:
            return outputs[lo]
        mid = (lo + hi + 1) // 2
        return torch.where(x >= t[mid - 1], between(mid, hi), between(lo, mid - 1))

    return torch.where(x != x, x, between(0, t.shape[0]))     # x != x vectorizes, isnan does not


def clip_parts(project_kernel, x: torch.Tensor, tables: tuple, levels: torch.Tensor, alpha: torch.Tensor):
    """The activation quantizer's forward and all its backward needs, in one tensor: (α · q, code) with
    u = x / α, q = project(u) (u below 0 to 0, above 1 to 1) and ``code`` the slope of the output with
    respect to α where 0 <= u <= 1 (q − u, always finite), +inf where u > 1 (slope 1) and NaN below 0 or
    for NaN (slope 0): no gradient reaches x exactly where the code is not finite."""
    u = x / alpha
    q = project_kernel(u, *tables, levels)
    inside = (u >= 0) & (u <= 1)
    code = torch.where(inside, q - u, torch.where(u > 1, float("inf"), float("nan")))
    return q * alpha, code


def clip_grads(grad: torch.Tensor, code: torch.Tensor):
    """The activation quantizer's backward from :func:`clip_parts`' code: (gradient of x, per-element
    gradient of α) = (g · [0 <= u <= 1], g · slope)."""
    inside = (code - code) == 0                  # finite (inf − inf and NaN − NaN are NaN); vectorizes
    slope = torch.where(inside, code, (code == float("inf")).to(code.dtype))
    return grad * inside.to(grad.dtype), grad * slope


def clip_tree(x, thresholds, levels, alpha):
    return clip_parts(select_tree, x, (thresholds,), levels, alpha)


def clip_lookup(x, bucket_key, bucket_threshold, base, levels, alpha):
    return clip_parts(lookup, x, (bucket_key, bucket_threshold, base), levels, alpha)


def clip_search(x, thresholds, levels, alpha):
    return clip_parts(search, x, (thresholds,), levels, alpha)


# name -> (kernel, the dimensions of its arguments that vary between calls; every other one is compiled in).
_N, _TABLE = {0: "n"}, {0: "buckets"}
KERNELS = {"project tree": (select_tree, (_N, None, None)),
           "project lookup": (lookup, (_N, None, _TABLE, _TABLE, {0: "levels"})),
           "clip tree": (clip_tree, (_N, None, None, None)),
           "clip lookup": (clip_lookup, (_N, None, _TABLE, _TABLE, {0: "levels"}, None)),
           "clip grads": (clip_grads, (_N, _N))}
