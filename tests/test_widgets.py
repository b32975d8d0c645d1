"""The bitwidth widget, driven through its controls as a reader would move them."""
import base64

import pytest
import torch

from apot_utils.core.levels import weight_level_set
from apot_utils.notebook.widgets import level_explorer


@pytest.fixture
def explorer():
    weights = torch.randn(20_000, generator=torch.Generator().manual_seed(0))
    return level_explorer(weights, "a normal sample", bits=2, scheme="apot", alpha=1.5)


def test_bitwidth_slider_redraws_the_levels(explorer):
    assert len(explorer.drawn_levels()) == 3
    before = explorer.image.value
    explorer.bits.value = 5
    assert len(explorer.drawn_levels()) == 31
    assert explorer.drawn_levels() == pytest.approx((weight_level_set(5) * 1.5).tolist())
    assert explorer.image.value != before
    assert "31</span> weight levels" in explorer.summary.value


def test_scheme_dropdown_and_terms_slider(explorer):
    explorer.bits.value = 5
    apot = explorer.drawn_levels()
    explorer.scheme.value = "pot"
    assert explorer.terms.disabled
    pot = explorer.drawn_levels()
    assert len(pot) == len(apot) == 31 and pot != apot
    assert pot == pytest.approx((weight_level_set(5, "pot") * 1.5).tolist())
    explorer.scheme.value = "apot"
    assert not explorer.terms.disabled and explorer.terms.max == 4 and explorer.terms.value == 2
    explorer.terms.value = 1          # one term: the power-of-two set again
    assert explorer.drawn_levels() == pytest.approx(pot)


def test_alpha_slider_moves_levels_and_error(explorer):
    explorer.bits.value = 4
    text = explorer.summary.value
    explorer.alpha.value = 3.0
    assert max(explorer.drawn_levels()) == pytest.approx(3.0)
    assert explorer.summary.value != text and "α = 3.00 σ" in explorer.summary.value


def test_static_fallback_is_the_current_picture(explorer):
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]) == explorer.image.value
    assert bytes(explorer.image.value).startswith(b"\x89PNG")


def test_bad_settings_are_refused_clearly():
    weights = torch.randn(100)
    with pytest.raises(ValueError, match="bits must be from 2 to 8"):
        level_explorer(weights, "sample", bits=12)
    with pytest.raises(ValueError, match="scheme must be one of"):
        level_explorer(weights, "sample", scheme="log")
    with pytest.raises(ValueError, match="alpha must be from"):
        level_explorer(weights, "sample", alpha=20.0)
