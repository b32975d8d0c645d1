"""Lookup tables of the ONNX variants: the exact variant's bucket lookup of an activation's level on exact float32
decision thresholds, and the fast variant's uint8 grid, on which every midpoint between two levels is a cell
boundary."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.levels import integer_levels
from ..fast.projection import decisions, project
from ..integer.layers import IntegerConv2d
from .onnx_builder import UnsupportedModel

_MAX_BUCKETS = 1 << 16


def activation_thresholds(conv: IntegerConv2d) -> torch.Tensor:
    """The float32 decision thresholds of ``conv``'s activation quantizer in input units: an input x gets
    the i-th sorted level exactly when thresholds[i-1] <= x < thresholds[i], the integer path's
    decisions (:func:`apot_utils.fast.projection.decisions` for fl(x / α), computed with α folded in)."""
    values = tuple(conv.act_levels.float().tolist())
    return decisions(values, torch.float32, torch.device("cpu"), float(conv.act_alpha.float())).thresholds


def bucket_tables(thresholds: torch.Tensor, alpha: float, integers: torch.Tensor):
    """Tables for an exact lookup of the level of a float32 input x among float32 thresholds.

    The bucket of x is b(x) = clip(floor(fl(x · c)), 0, B − 1), c = fl(B / α), B = 2^m the smallest power of
    two that gives every threshold a bucket of its own. b is monotone in x, so the thresholds in lower buckets
    are all <= x and those in higher ones all > x: x's level is ``levels[2 b + (x >= edge[b])]``, ``edge[b]``
    the bucket's threshold (+inf where it holds none). Returns c (0-d float32), B, edge ([B] float32) and
    levels ([2 B] float32: the level integers below and at or above each bucket's threshold)."""
    for m in range(4, 17):
        count = 1 << m
        scale = torch.tensor(count / alpha, dtype=torch.float32)
        keys = torch.floor(thresholds * scale).clamp(0, count - 1).long()
        if bool((keys[1:] > keys[:-1]).all()):
            break
    else:
        raise UnsupportedModel(f"the activation thresholds need more than {_MAX_BUCKETS} buckets")
    base = torch.searchsorted(keys, torch.arange(count))                 # thresholds in lower buckets
    has = torch.zeros(count, dtype=torch.long)
    has[keys] = 1
    edge = torch.full((count,), float("inf"))
    edge[keys] = thresholds
    levels = torch.stack([integers[base], integers[base + has]], dim=1).reshape(-1).float()
    return scale.numpy(), count, edge.numpy(), levels.numpy()


def grid_steps(bits: int, scheme: str, terms: int | None) -> int:
    """r: the fast variant's uint8 grid has r steps per 1 / I_max (the largest power of two with r · I_max <= 255,
    at least 2 so that every midpoint between two levels is a grid point)."""
    top = int(integer_levels(bits, scheme, terms)[-1])
    r = 1 << int(math.floor(math.log2(255 / top))) if top <= 127 else 0
    if r < 2:
        raise UnsupportedModel(f"{bits}-bit {scheme} activations: the largest level integer is {top}, so the midpoints "
                               "between levels need more than 8 bits (the fast variant runs up to 5-bit APoT)")
    return r


def grid_table(conv: IntegerConv2d, r: int) -> np.ndarray:
    """[256] uint8: the activation integer of each cell m = 0..255 of the fast variant's grid, the inputs
    between m and m + 1 steps of α / (r · I_max): every midpoint between two levels is a cell boundary, so a
    cell lies on one side of each and its level is that of its centre (beyond α: the top level)."""
    top = int(conv.act_integers[-1])
    u = (torch.arange(256, dtype=torch.float64) + 0.5) / (r * top)
    level = project(u.float(), conv.act_levels.float())
    index = torch.searchsorted(conv.act_sorted.float(), level)
    return conv.act_integers[index].numpy().astype(np.uint8)
