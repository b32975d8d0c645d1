"""Quantization level sets at clipping threshold 1.

Every set is a sorted float32 tensor of non-negative levels whose largest value is 1.
A b-bit *unsigned* set (activations) has 2**b levels in [0, 1]. Weights use the signed
set built from the (b - 1)-bit magnitude set: ``-m[::-1] ∪ m``, 2**b - 1 levels in [-1, 1].

Additive powers-of-two (the paper's Q^a(α, kn), section 3): a level is a sum of ``terms``
power-of-two terms, ``Σ_i p_i`` with ``p_i ∈ {0, 2^-e : e ∈ E_i}``, the exponent sets E_i
disjoint. The bits are split over the terms as evenly as possible, wider terms first
(``b = 5, terms = 3`` gives widths 2, 2, 1); a term of width k_i takes 2**k_i - 1 exponents.

The exponent rule. Exponents 1, 2, 3, ... are handed out in order of a position: the j-th
exponent (j = 0 .. m_i - 1) of a term with m_i exponents sits at ``(j + 1/2) / m_i``, and on
equal positions the earlier term comes first. For ``b = k·n`` this is the paper's round robin
(p_i ∈ {0, 2^-i, 2^-(i+n), ...}); for b = 3 and 5 it gives the odd sets the authors released.
With ``terms = 1`` the rule gives power-of-two levels, with ``terms = b`` the uniform grid.

Normalization follows the release arithmetic exactly: the sums are rounded to float32 and
multiplied, in float32, by the float32 reciprocal of their maximum (the largest level then set to 1,
which it already is for every released set). The released checkpoints
were trained with these values, so b = 2..6 at the default ``terms`` match them bit for bit.

Order and ties. ``level_set`` and ``weight_magnitudes`` return sorted sets. The quantizers project
onto :func:`projection_order` instead: the same values, in the order in which the release's
construction ``torch.Tensor(list(set(values)))`` listed them (at 2 bits ``[0, 1, 0.5, 0.25]``).
The release took ``argmin |x − q|`` over that list, so a value exactly on a midpoint goes to
whichever of its two levels comes first there; :func:`apot_utils.fast.projection.project` follows the
order it is given. Sets the authors did not release (other schemes or terms, 7–8 bits) stay
sorted: ties go to the lower level.

Which (b, n) exist: float32 must tell every level apart; :func:`available_terms` lists the
numbers of terms n that work at each b (at 8 bits n = 1 and n = 2 do not, nor PoT).
"""
from __future__ import annotations

import math
from functools import lru_cache
from numbers import Integral

import torch

SCHEMES = ("apot", "pot", "uniform")
LEVEL_RULE = "apot-position-v1"   # the exponent rule below, versioned: recorded in every file this project writes
MIN_BITS, MAX_BITS = 2, 8
FULL_PRECISION = 32              # the bitwidth that means "not quantized"


def default_terms(bits: int) -> int:
    """Number of additive terms the release uses: 2-bit terms, ``ceil(bits / 2)`` of them."""
    return math.ceil(bits / 2)


def term_widths(bits: int, terms: int) -> list[int]:
    """Bits of each additive term, wider first; they sum to ``bits``."""
    return [bits // terms + (1 if i < bits % terms else 0) for i in range(terms)]


def term_exponents(bits: int, terms: int) -> list[list[int]]:
    """Power-of-two exponents e (level 2^-e before normalization) of each additive term."""
    counts = [2**k - 1 for k in term_widths(bits, terms)]
    slots = sorted(
        ((j + 0.5) / m, term) for term, m in enumerate(counts) for j in range(m)
    )
    exponents: list[list[int]] = [[] for _ in counts]
    for exponent, (_, term) in enumerate(slots, start=1):
        exponents[term].append(exponent)
    return exponents


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {value}")
    return int(value)


def _normalize_release_style(values: list[float]) -> torch.Tensor:
    """float32 tensor of ``values`` (in the given order) times the float32 reciprocal of their maximum,
    the largest then set to exactly 1 (for a few maxima, such as b = 6 with n = 5, the product rounds to
    1 − 2^-24; every released set's largest level is 1 already)."""
    tensor = torch.tensor(values, dtype=torch.float32)
    tensor = tensor.mul(1.0 / tensor.max())
    tensor[tensor.argmax()] = 1.0
    return tensor


def _apot_sums(bits: int, terms: int) -> list[float]:
    """Every sum of one element per term, in the release's loop order (first term outermost)."""
    sums = [0.0]
    for exps in term_exponents(bits, terms):
        sums = [s + p for s in sums for p in [0.0] + [2.0**-e for e in exps]]
    return sums


def _distinct_in_float32(bits: int, scheme: str, terms: int) -> bool:
    if scheme == "uniform":
        return True
    levels = _normalize_release_style(sorted(set(_apot_sums(bits, 1 if scheme == "pot" else terms))))
    return levels.numel() == 2**bits and bool((levels[1:] > levels[:-1]).all())


def available_terms(bits: int) -> list[int]:
    """The numbers of additive terms n for which a b-bit APoT set exists in float32."""
    return [n for n in range(1, bits + 1) if _distinct_in_float32(bits, "apot", n)]


@lru_cache(maxsize=None)
def _magnitudes(bits: int, scheme: str, terms: int) -> torch.Tensor:
    """Unchecked builder of the sorted set; ``bits`` may be 1 (the ternary weights' magnitudes {0, 1})."""
    if scheme == "uniform":
        return torch.arange(2**bits, dtype=torch.float64).div(2**bits - 1).float()
    if not _distinct_in_float32(bits, scheme, terms):
        if scheme == "pot":
            raise ValueError(f"pot with bits={bits} has levels that float32 cannot tell apart (its smallest power "
                             f"of two is 2^-{2**bits - 1}); use at most 7 bits or the 'apot' scheme")
        raise ValueError(f"apot with bits={bits}, terms={terms} has levels that float32 cannot tell apart; "
                         f"at {bits} bits terms must be one of {available_terms(bits)}")
    return _normalize_release_style(sorted(set(_apot_sums(bits, 1 if scheme == "pot" else terms))))


def _is_released(bits: int, scheme: str, terms: int) -> bool:
    return scheme == "apot" and 2 <= bits <= 6 and terms == default_terms(bits)


@lru_cache(maxsize=None)
def _release_listing(bits: int, scheme: str, terms: int) -> torch.Tensor:
    if not _is_released(bits, scheme, terms):
        return _magnitudes(bits, scheme, terms)
    return _normalize_release_style(list(set(_apot_sums(bits, terms))))


def _validate(bits, scheme: str, terms, min_bits: int) -> tuple[int, str, int]:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    bits = _check_int("bits", bits, min_bits, MAX_BITS)
    if scheme != "apot":
        if terms is not None:
            raise ValueError(f"terms applies to the 'apot' scheme only, not {scheme!r}")
        return bits, scheme, 1 if scheme == "pot" else bits
    terms = default_terms(bits) if terms is None else _check_int("terms", terms, 1, bits)
    return bits, scheme, terms


def level_set(bits: int, scheme: str = "apot", terms: int | None = None) -> torch.Tensor:
    """Unsigned b-bit levels at α = 1: sorted float32 tensor [2**bits] from 0 to 1.

    bits: 2..8. scheme: 'apot', 'pot' or 'uniform'. terms: number of additive terms
    (the paper's n; APoT only, 1..bits, default ``ceil(bits / 2)``).
    PoT needs exponents down to 2^-(2**bits - 1): float32 holds them up to 7 bits.
    """
    bits, scheme, terms = _validate(bits, scheme, terms, MIN_BITS)
    return _magnitudes(bits, scheme, terms).clone()


def weight_level_set(bits: int, scheme: str = "apot", terms: int | None = None) -> torch.Tensor:
    """Signed b-bit weight levels at α = 1: sorted float32 tensor [2**bits - 1] in [-1, 1].

    The magnitudes are the (bits - 1)-bit set (sign bit apart); at 2 bits the set is
    ternary {-1, 0, 1}. ``terms`` counts the magnitude set's additive terms
    (default ``ceil((bits - 1) / 2)``).
    """
    _check_weight_terms(bits, scheme, terms)
    magnitudes = _magnitude_set(bits - 1, scheme, terms)
    return torch.cat([-magnitudes[1:].flip(0), magnitudes])


def _check_weight_terms(bits: int, scheme: str, terms: int | None) -> None:
    """Check b-bit weights' (b - 1)-bit magnitude set with ``terms``; the error says it is that set."""
    _validate(bits, scheme, None, MIN_BITS)
    try:
        _magnitudes(*_validate(bits - 1, scheme, terms, 1))
    except ValueError as error:
        raise ValueError(f"{bits}-bit weights project their magnitudes to a {bits - 1}-bit set: {error}") from None


def _magnitude_set(bits: int, scheme: str, terms: int | None) -> torch.Tensor:
    bits, scheme, terms = _validate(bits, scheme, terms, 1)
    return _magnitudes(bits, scheme, terms).clone()


def weight_magnitudes(bits: int, scheme: str = "apot", terms: int | None = None) -> torch.Tensor:
    """The (bits - 1)-bit unsigned set that weight magnitudes are projected to."""
    _check_weight_terms(bits, scheme, terms)
    return _magnitude_set(bits - 1, scheme, terms)


def projection_order(bits: int, scheme: str = "apot", terms: int | None = None) -> torch.Tensor:
    """The unsigned b-bit set in the order the quantizers project onto (ties to the earlier level).

    For the sets the authors released (APoT, default terms, 2..6 bits) this is the order of the
    release's ``list(set(values))``; for every other set, ascending. ``bits`` may be 1 here (the
    ternary weights' magnitudes {0, 1}, which the release rounded half to even: ties to 0).
    """
    bits, scheme, terms = _validate(bits, scheme, terms, 1)
    return _release_listing(bits, scheme, terms).clone()


def weight_projection_order(bits: int, scheme: str = "apot", terms: int | None = None) -> torch.Tensor:
    """:func:`projection_order` of the (bits - 1)-bit weight magnitude set."""
    _check_weight_terms(bits, scheme, terms)
    return projection_order(bits - 1, scheme, terms)


def integer_levels(bits: int, scheme: str = "apot", terms: int | None = None) -> torch.Tensor:
    """The b-bit set as integers: sorted int64 tensor I [2**bits] with ``level_set(...) == I / I[-1]``
    up to float32 rounding (exact ratios; the float32 levels are their roundings).

    APoT and PoT: a level before normalization is Σ 2^-e over disjoint exponents, so in units of 2^-E
    (E the largest exponent) it is an integer with at most n set bits (PoT: one); uniform: 0, 1, ...,
    2^b − 1. ``bits`` may be 1 (the ternary weights' magnitudes {0, 1}).
    """
    bits, scheme, terms = _validate(bits, scheme, terms, 1)
    if scheme == "uniform":
        return torch.arange(2**bits, dtype=torch.int64)
    exponents = term_exponents(bits, terms)
    top = max(e for exps in exponents for e in exps)
    if top > 62:
        raise ValueError(f"{scheme} with bits={bits}, terms={terms} needs exponents down to 2^-{top}: its integers "
                         "do not fit in int64")
    sums = {0}
    for exps in exponents:
        sums = {s + p for s in sums for p in [0] + [2 ** (top - e) for e in exps]}
    return torch.tensor(sorted(sums), dtype=torch.int64)


def max_set_bits(bits: int, scheme: str = "apot", terms: int | None = None) -> int:
    """The most set bits of any :func:`integer_levels` integer: the shifted copies a multiplication by a
    level needs (APoT: n, PoT: 1, uniform: b)."""
    return max(bin(int(v)).count("1") for v in integer_levels(bits, scheme, terms))

