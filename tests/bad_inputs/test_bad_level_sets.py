"""The projection at its edges (inf, NaN, huge values, exact midpoints) and every level set that
:func:`~apot_utils.core.levels.available_terms` lists, through every place that offers it."""
import subprocess
import sys

import pytest
import torch

from apot_utils.fakequant.layers import QuantConv2d
from apot_utils.core.levels import (MAX_BITS, MIN_BITS, available_terms, level_set, projection_order, weight_level_set,
                               weight_projection_order)
from apot_utils.core.reference import nearest_level
from apot_utils.fast.projection import project
from apot_utils.fakequant.quantizers import quantize_activation

EDGE_VALUES = [float("inf"), -float("inf"), float("nan"), 1e38, -1e38, 3.4e38, 1e-45, -0.0, 0.0, 1.0, 2.0]

PROJECTION_SCRIPT = """
import sys, torch
from apot_utils.core.levels import level_set
from apot_utils.fast.projection import project
n = int(sys.argv[1])
x = torch.tensor([float(v) for v in sys.argv[2:]]).repeat(n // (len(sys.argv) - 2) + 1)[:n]
out = project(x, level_set(4))
print(" ".join(repr(v) for v in out[: len(sys.argv) - 2].tolist()))
"""


@pytest.mark.parametrize("numel", [11, 1 << 17])        # eager kernel; compiled kernel (>= 65,536 elements)
def test_projection_of_inf_nan_and_huge_values(numel):
    run = subprocess.run([sys.executable, "-c", PROJECTION_SCRIPT, str(numel), *map(repr, EDGE_VALUES)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    got = [float(v) for v in run.stdout.split()]
    expected = [1.0, 0.0, float("nan"), 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert [str(v) for v in got] == [str(v) for v in expected]


def test_nan_input_stays_nan_through_a_layer():
    conv = QuantConv2d(2, 2, 1, bit=3).eval()
    x = torch.rand(1, 2, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    with torch.no_grad():
        out = conv(x)
    assert torch.isnan(out[0, :, 1, 1]).all() and torch.isfinite(out[0, :, 0, 0]).all()


def release_argmin(x, bits):
    """The release's projection, restated: its construction's list order, argmin's first index."""
    from apot_utils.core.levels import _apot_sums, default_terms

    listed = torch.tensor(list(set(_apot_sums(bits, default_terms(bits)))), dtype=torch.float32)
    listed = listed.mul(1.0 / listed.max())
    return listed[(x.unsqueeze(0) - listed.unsqueeze(1)).abs().min(dim=0)[1]]


@pytest.mark.parametrize("bits", range(2, 7))
def test_released_sets_break_ties_as_the_release(bits):
    levels = level_set(bits)
    midpoints = ((levels[1:].double() + levels[:-1].double()) / 2).float()
    exact = midpoints[(midpoints.double() * 2 == levels[1:].double() + levels[:-1].double())]
    assert exact.numel() > 0
    expected = release_argmin(exact, bits)
    assert torch.equal(project(exact, projection_order(bits)), expected)
    if bits == 2:   # [0, 1, 0.5, 0.25]: the midpoint 0.375 goes up to 0.5, where sorted order sends it down
        assert project(torch.tensor([0.375]), projection_order(2)).item() == 0.5
        assert project(torch.tensor([0.375]), level_set(2)).item() == 0.25
    x = torch.rand(50_000, generator=torch.Generator().manual_seed(bits))
    assert torch.equal(project(x, projection_order(bits)), nearest_level(x, projection_order(bits)))


def test_weight_magnitudes_follow_the_release_order():
    for bits in range(3, 7):
        assert torch.equal(weight_projection_order(bits), projection_order(bits - 1))


def test_level_sets_that_float32_cannot_hold_say_which_exist():
    assert available_terms(8) == [3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match=r"terms must be one of \[3, 4, 5, 6, 7, 8\]"):
        level_set(8, terms=1)
    with pytest.raises(ValueError, match="use at most 7 bits"):
        level_set(8, "pot")


LISTED = [(b, n) for b in range(1, MAX_BITS + 1) for n in available_terms(b)]


@pytest.mark.parametrize("bits, terms", LISTED)
def test_every_listed_set_projects_exactly(bits, terms):
    """(6, 5) and (8, 5) had a largest level of 1 − 2^-24; (7, 2) was too dense for a bucket table."""
    levels = projection_order(bits, terms=terms)
    assert float(levels.max()) == 1.0
    sorted_levels = levels.sort().values.double()
    midpoints = ((sorted_levels[1:] + sorted_levels[:-1]) / 2).float()
    x = torch.cat([torch.rand(70_000, generator=torch.Generator().manual_seed(bits * 10 + terms)) * 1.2 - 0.1,
                   levels, midpoints, torch.nextafter(midpoints, torch.zeros_like(midpoints)),
                   torch.tensor([float("inf"), -float("inf"), float("nan")])])   # above the fused kernel's threshold
    expected = nearest_level(x.clamp(0, 1), levels).masked_fill(x.isnan(), float("nan"))   # NaN stays NaN
    torch.testing.assert_close(project(x, levels), expected, rtol=0, atol=0, equal_nan=True)
    alpha, a = torch.tensor(2.5), x * 2.5
    expected = (nearest_level((a / alpha).clamp(0, 1), levels) * alpha).masked_fill(x.isnan(), float("nan"))
    torch.testing.assert_close(quantize_activation(a, alpha, levels), expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("bits, terms", [(b, n) for b, n in LISTED if b >= MIN_BITS])
def test_every_listed_set_trains_in_a_layer(bits, terms):
    """A QuantConv2d with n terms uses the b-bit set for activations and the (b − 1)-bit one for weight
    magnitudes: it works where both exist, and otherwise says which n the weights allow."""
    if terms not in available_terms(bits - 1):
        with pytest.raises(ValueError, match=f"{bits}-bit weights project their magnitudes to a {bits - 1}-bit set"):
            QuantConv2d(4, 4, 3, padding=1, bit=bits, terms=terms)
        return
    conv = QuantConv2d(4, 4, 3, padding=1, bit=bits, terms=terms, act_alpha=2.0, weight_alpha=2.0)
    x = (torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
    out = conv(x)
    out.square().sum().backward()
    grads = [x.grad, conv.weight.grad, conv.act_alpha.grad, conv.weight_alpha.grad]
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    w = conv._quantized_weight().detach().flatten() / conv.weight_alpha.detach()
    assert (w[:, None] - weight_level_set(bits, terms=terms)).abs().min(dim=1).values.max() < 1e-6   # on the signed set


def test_the_widget_offers_only_sets_that_draw():
    """The terms slider offers exactly the n that exist for the (b − 1)-bit magnitudes; the error curve and the
    levels of every offered (b, n) compute, and the two pairs that once failed redraw in full."""
    from apot_utils.notebook.analysis import quantization_mse
    from apot_utils.core.levels import weight_magnitudes
    from apot_utils.notebook.widgets import EXPLORER_ALPHAS, level_explorer

    weights = torch.randn(2_000, generator=torch.Generator().manual_seed(0)).double()
    explorer = level_explorer(weights, "a normal sample", bits=3)
    for bits in range(MIN_BITS + 1, MAX_BITS + 1):
        explorer.bits.value = bits
        offered = list(range(explorer.terms.min, explorer.terms.max + 1))
        assert offered == available_terms(bits - 1)
        for terms in offered:
            assert len(weight_magnitudes(bits, "apot", terms)) == 2 ** (bits - 1)
            assert torch.isfinite(quantization_mse(weights, bits, "apot", EXPLORER_ALPHAS, terms)).all()
    for bits, terms in ((8, 2), (7, 5)):          # the magnitude sets (7, 2) and (6, 5)
        explorer.bits.value = bits
        explorer.terms.value = terms
        assert len(explorer.drawn_levels()) == 2**bits - 1 and f"n = {terms}" in explorer.summary.value
