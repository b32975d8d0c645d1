"""The measurements of the level-set and quantizer chapters."""

import pytest
import torch

from apot_utils.notebook import analysis
from apot_utils.core.levels import level_set
from apot_utils.fakequant.spec import ModelSpec


@pytest.fixture(scope="module")
def normal():
    return torch.randn(50_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_error_is_the_mean_squared_distance_to_the_nearest_level(normal):
    alpha = 2.0
    levels = torch.cat([-level_set(3).flip(0)[:-1], level_set(3)]).double() * alpha   # 4-bit signed
    nearest = levels[(normal.clamp(-alpha, alpha)[:, None] - levels).abs().argmin(1)]
    expected = (nearest - normal).square().mean()
    assert float(analysis.quantization_mse(normal, 4, "apot", alpha)) == pytest.approx(float(expected), rel=1e-12)


def test_error_table_shows_pot_stalls_and_apot_keeps_improving(normal):
    rows = {(r["bits"], r["scheme"]): r for r in analysis.error_table(normal, bits=range(2, 7))}
    assert rows[(2, "apot")]["mse"] == rows[(2, "pot")]["mse"] == rows[(2, "uniform")]["mse"]   # ternary
    assert rows[(6, "pot")]["mse"] > 0.95 * rows[(5, "pot")]["mse"]          # PoT: more bits, no better
    for b in range(3, 6):
        assert rows[(b + 1, "apot")]["mse"] < 0.5 * rows[(b, "apot")]["mse"]
    assert rows[(6, "pot")]["mse"] > 10 * rows[(6, "apot")]["mse"]
    assert all(r["vs_apot"] == pytest.approx(r["mse"] / rows[(r["bits"], "apot")]["mse"]) for r in rows.values())


def test_activation_quantizer_curves_follow_the_straight_through_rule():
    alpha = 2.0
    c = analysis.quantizer_curves(3, "apot", alpha, signed=False, points=201)
    x, inside = c["x"], (c["x"] >= 0) & (c["x"] <= alpha)
    assert torch.equal(c["dq_dx"], inside.double())
    expected = torch.where(inside, c["q"] / alpha - x / alpha, (x > alpha).double())
    assert torch.allclose(c["dq_dalpha"], expected, atol=1e-12)
    assert set(c["q"].tolist()) <= set((level_set(3).double() * alpha).tolist())


def test_weight_quantizer_passes_gradients_everywhere():
    c = analysis.quantizer_curves(3, "uniform", 1.0, signed=True, points=101)
    assert torch.all(c["dq_dx"] == 1)
    assert torch.equal(c["dq_dalpha"][c["x"] > 1], torch.ones(int((c["x"] > 1).sum()), dtype=torch.float64))


def test_learned_alpha_settles_where_the_straight_through_gradient_vanishes(normal):
    t = analysis.fit_alpha(normal, 4, "apot", init=4.0, steps=300)
    assert len(t["alpha"]) == 301 and t["alpha"][0] == 4.0
    assert abs(t["alpha"][-1] - t["alpha"][-2]) < 1e-4                           # converged
    assert t["mse"][-1] < t["mse"][0]
    _, best = analysis.best_alpha(normal, 4, "apot")
    assert t["mse"][-1] < 1.1 * best


def test_layer_inputs_land_on_the_levels():
    torch.manual_seed(0)
    model = ModelSpec("cifar10", "resnet20", 3).build()
    x, q = analysis.layer_inputs(model, "layer2.0.conv1", torch.randn(4, 3, 32, 32))
    layer = dict(model.named_modules())["layer2.0.conv1"]
    assert x.shape == q.shape == (4, 16, 32, 32)
    allowed = (layer.act_levels * layer.act_alpha.detach()).tolist()
    assert set(q.unique().tolist()) <= set(allowed)
    with pytest.raises(ValueError, match="not a quantized"):
        analysis.layer_inputs(model, "conv1", torch.randn(1, 3, 32, 32))


def test_lsq_is_rcf_with_its_gradient_scale_on_the_same_levels():
    x = torch.rand(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    g = 1 / (x.numel() * 7) ** 0.5
    rcf = analysis.fit_activation_alpha(x, 3, "RCF", init=1.0, steps=20, lr=0.5, scheme="uniform")
    lsq = analysis.fit_activation_alpha(x, 3, "LSQ", init=1.0, steps=20, lr=0.5 / g, scheme="uniform")
    assert lsq["alpha"] == pytest.approx(rcf["alpha"], abs=1e-9) and rcf["alpha"][-1] > 1.5
    pact = analysis.fit_activation_alpha(x, 3, "PACT", init=1.0, steps=20, lr=0.5, scheme="uniform")
    assert all(b >= a for a, b in zip(pact["alpha"], pact["alpha"][1:]))      # under MSE, PACT's α only grows
    with pytest.raises(ValueError, match="rule must be one of"):
        analysis.fit_activation_alpha(x, 3, "DoReFa", init=1.0)
