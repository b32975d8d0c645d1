"""Solutions of chapter 07's exercises (do them before you read this)."""
from __future__ import annotations

import torch


def my_shift_terms(c: int) -> list[tuple[int, int]]:
    """The signed weight integer c as (sign, shift) pairs, one per set bit of |c|, lowest shift first:
    c == sum(sign << shift for sign, shift in pairs), every sign the sign of c; [] for c = 0."""
    sign = -1 if c < 0 else 1
    magnitude = abs(c)
    return [(sign, k) for k in range(magnitude.bit_length()) if magnitude >> k & 1]


def my_accumulator_bound(a_max: int, w: torch.Tensor) -> int:
    """The largest |partial sum| of a convolution of integer activations in [−a_max, a_max] with the integer
    weights w [O, C, kh, kw]: a_max times the largest Σ|w| of one output channel (one filter)."""
    return a_max * int(w.abs().flatten(1).sum(1).max())
