import pytest
import torch

from apot_utils.core.levels import (SCHEMES, default_terms, level_set, term_exponents, weight_level_set,
                               weight_magnitudes)

# The sets the authors released (data README), before normalization: products of terms.
RELEASED_TERMS = {
    2: [[0, 2**-1, 2**-2, 2**-3]],
    3: [[0, 2**-1, 2**-2, 2**-4], [0, 2**-3]],
    4: [[0, 2**-1, 2**-3, 2**-5], [0, 2**-2, 2**-4, 2**-6]],
    5: [[0, 2**-1, 2**-3, 2**-6], [0, 2**-2, 2**-4, 2**-7], [0, 2**-5]],
    6: [[0, 2**-1, 2**-4, 2**-7], [0, 2**-2, 2**-5, 2**-8], [0, 2**-3, 2**-6, 2**-9]],
}


def released_set(bits):
    sums = [0.0]
    for term in RELEASED_TERMS[bits]:
        sums = [s + p for s in sums for p in term]
    values = torch.tensor(sorted(set(sums)), dtype=torch.float32)
    return values * (1.0 / values.max())   # the release normalizes in float32


@pytest.mark.parametrize("bits", range(2, 7))
def test_apot_equals_released_sets(bits):
    assert torch.equal(level_set(bits, "apot"), released_set(bits))


@pytest.mark.parametrize("bits, scheme", [(b, s) for b in range(2, 9) for s in SCHEMES if (b, s) != (8, "pot")])
def test_sizes_range_monotone(bits, scheme):
    levels = level_set(bits, scheme)
    assert levels.dtype == torch.float32 and levels.numel() == 2**bits
    assert levels[0] == 0 and levels[-1] == 1
    assert bool((levels[1:] > levels[:-1]).all())
    signed = weight_level_set(bits, scheme)
    assert signed.numel() == 2**bits - 1
    assert torch.equal(signed, -signed.flip(0))
    assert torch.equal(signed[signed >= 0], weight_magnitudes(bits, scheme))


def test_special_cases():
    assert torch.equal(weight_level_set(2), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(level_set(3, "uniform"), torch.arange(8) / 7)
    pot = level_set(4, "pot")
    assert torch.equal(pot[1:], 2.0 ** -torch.arange(14, -1, -1).float())
    # terms = bits gives the uniform grid, terms = 1 gives PoT
    assert torch.allclose(level_set(5, "apot", terms=5), level_set(5, "uniform"))
    assert torch.equal(level_set(5, "apot", terms=1), level_set(5, "pot"))


def test_exponent_rule_is_round_robin_for_even_splits():
    for bits, n in [(4, 2), (6, 3), (6, 2), (8, 4)]:
        k = bits // n
        expected = [[i + 1 + j * n for j in range(2**k - 1)] for i in range(n)]
        assert term_exponents(bits, n) == expected
    assert [default_terms(b) for b in range(2, 9)] == [1, 2, 2, 3, 3, 4, 4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(bits=1), "bits must be from 2 to 8"),
    (dict(bits=33), "bits must be from 2 to 8"),
    (dict(bits=3.0), "bits must be an integer"),
    (dict(bits=True), "bits must be an integer"),
    (dict(bits=4, terms=5), "terms must be from 1 to 4"),
    (dict(bits=4, terms=0), "terms must be from 1 to 4"),
    (dict(bits=4, terms=1.5), "terms must be an integer"),
    (dict(bits=4, scheme="log"), "scheme must be one of"),
    (dict(bits=4, scheme="uniform", terms=2), "terms applies to the 'apot' scheme only"),
    (dict(bits=8, scheme="pot"), "float32 cannot tell apart"),
])
def test_invalid_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        level_set(**kwargs)
