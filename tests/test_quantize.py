import os
import subprocess
import sys
import warnings

import pytest
import torch

from apot_utils.fast import aot, projection
from apot_utils.fast import kernels as kernel_bodies
from apot_utils.fakequant.layers import QuantConv2d
from apot_utils.core.levels import level_set, projection_order, weight_magnitudes
from apot_utils.core.reference import nearest_level
from apot_utils.fast.projection import project
from apot_utils.fakequant.quantizers import quantize_activation, quantize_weight

RELEASED = [level_set(b) for b in range(2, 7)] + [weight_magnitudes(b) for b in range(3, 7)]


def near_midpoints(levels, dtype, ulps=6):
    """Every midpoint of neighbouring levels and the `ulps` floats on each side of it."""
    lv = levels.to(dtype)
    mids = (lv[1:] + lv[:-1]) / 2
    out, up, down = [mids, lv], mids.clone(), mids.clone()
    for _ in range(ulps):
        up = torch.nextafter(up, torch.full_like(up, 2))
        down = torch.nextafter(down, torch.full_like(down, -2))
        out += [up, down]
    return torch.cat(out)


def compiled_kernel_used(levels, dtype) -> bool:
    """Whether project's last large call on the CPU ran a fused kernel (apot_utils.fast.aot)."""
    name = "project tree" if len(levels) <= projection._TREE_MAX_LEVELS else "project lookup"
    return projection._checked.get((name, "cpu", dtype, len(levels))) is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index", range(len(RELEASED)))
@pytest.mark.parametrize("kernel", ["eager lookup", "eager tree", "compiled"])
def test_projection_equals_argmin(index, dtype, kernel, monkeypatch):
    levels = RELEASED[index]
    if kernel == "eager lookup":
        monkeypatch.setattr(projection, "_FUSED_MIN_NUMEL", 1 << 62)
    elif kernel == "eager tree":
        monkeypatch.setattr(projection, "_run", lambda kind, x, d, outputs: kernel_bodies.select_tree(x, *d.tree_tables, outputs))
    g = torch.Generator().manual_seed(index)
    x = torch.cat([torch.rand(1 << 17, generator=g, dtype=dtype) * 1.4 - 0.2, near_midpoints(levels, dtype)])
    assert torch.equal(project(x, levels), nearest_level(x, levels))
    if kernel == "compiled" and not compiled_kernel_used(levels, dtype):
        pytest.skip("fused kernels are not available here (no C++ compiler?)")
    alpha = torch.tensor(1.7, dtype=dtype)
    assert torch.equal(project(x, levels, scale=alpha), nearest_level(x, levels) * alpha)
    assert torch.equal(project(x * 1.7, levels, scale=alpha, divisor=alpha), nearest_level(x * 1.7 / alpha, levels) * alpha)


@pytest.mark.parametrize("bits, scheme", [(7, "pot"), (8, "apot"), (8, "uniform")])
def test_projection_dense_sets(bits, scheme):
    levels = level_set(bits, scheme)
    x = torch.cat([torch.rand(1 << 17), near_midpoints(levels, torch.float32)])   # large: the compiled lookup
    assert torch.equal(project(x, levels), nearest_level(x, levels))
    assert torch.equal(project(x[:20000], levels), nearest_level(x[:20000], levels))   # small: the eager lookup


PEAK_SCRIPT = """
import sys, torch
from apot_utils.core.levels import level_set
from apot_utils.fast.projection import project
from apot_utils.core.reference import nearest_level
fn = {"project": project, "argmin": nearest_level}[sys.argv[1]]
x = torch.rand(1 << 24)
levels = level_set(int(sys.argv[2]))
fn(x[:1024], levels)                                   # tables and code paths warmed up
def peak_kib():  # this process image's own high-water mark (ru_maxrss would carry the parent's over exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
before = peak_kib()
out = fn(x, levels)
print((peak_kib() - before) * 1024 / (x.numel() * 4))
"""


def extra_peak_ratio(fn: str, bits: int) -> float:
    """Peak resident memory the call adds, in units of the input's size (fresh process)."""
    env = {**os.environ, "APOT_COMPILE": "0"}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, fn, str(bits)], capture_output=True, text=True,
                         check=True, env=env)
    return float(out.stdout.split()[-1])


@pytest.mark.slow
def test_projection_memory_independent_of_levels():
    ratios = {bits: extra_peak_ratio("project", bits) for bits in (2, 5, 8)}
    assert all(r <= 3.0 for r in ratios.values()), ratios        # the output included
    assert max(ratios.values()) <= ratios[2] + 0.25, ratios      # does not grow with the number of levels
    assert extra_peak_ratio("argmin", 3) > 2 * max(ratios.values())   # N×L (8 levels): what project avoids


def test_activation_gradients_match_formula():
    levels = level_set(3)
    x = torch.tensor([-0.5, 0.0, 0.3, 1.1, 2.0, 3.5, 0.77], requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0, 0.25])
    out = quantize_activation(x, alpha, levels, grad_scale=0.5)
    out.backward(g)
    u = x.detach() / 2.0
    q = nearest_level(u.clamp(0, 1), levels)
    assert torch.equal(out.detach(), q * 2.0)
    inside = (u >= 0) & (u <= 1)
    assert torch.equal(x.grad, g * inside)
    slope = torch.where(u > 1, torch.ones_like(u), torch.where(u < 0, torch.zeros_like(u), q - u))
    assert torch.allclose(alpha.grad, 0.5 * (g * slope).sum())


@pytest.mark.parametrize("numel", [10, 1 << 17])        # eager kernels; fused kernels (>= 65,536 elements)
def test_activation_quantizer_on_edge_values(numel):
    """Forward, input gradient and α gradient equal the formulas bit for bit, NaN, ±inf, ±0 and both ends included."""
    levels = level_set(3)
    edge = torch.tensor([-1.0, -0.0, 0.0, 0.3, 2.0, 2.5, 7.0, float("inf"), -float("inf"), float("nan")])
    x = edge.repeat(numel // len(edge) + 1)[:numel].clone().requires_grad_()
    alpha = torch.tensor(2.0, requires_grad=True)
    g = torch.linspace(-1, 1, numel)
    out = quantize_activation(x, alpha, levels)
    out.backward(g)
    u = x.detach() / 2.0
    q = nearest_level(u.clamp(0, 1), levels).masked_fill(u.isnan(), float("nan"))
    assert torch.equal(out.detach().isnan(), u.isnan()) and torch.equal(out.detach().nan_to_num(), (q * 2.0).nan_to_num())
    inside = (u >= 0) & (u <= 1)
    assert torch.equal(x.grad, g * inside)
    slope = torch.where(inside, q - u, (u > 1).to(u.dtype))
    assert torch.equal(alpha.grad, (g * slope).sum())


def test_weight_gradients_match_formula():
    mags = weight_magnitudes(4)
    w = torch.tensor([-4.0, -1.2, -0.3, 0.0, 0.2, 0.9, 1.5, 5.0], requires_grad=True)
    alpha = torch.tensor(1.5, requires_grad=True)
    g = torch.arange(1.0, 9.0)
    quantize_weight(w, alpha, mags).backward(g)
    u = w.detach() / 1.5
    c = u.clamp(-1, 1)
    q = nearest_level(c.abs(), mags) * c.sign()
    assert torch.equal(w.grad, g)                       # straight through, not clipped
    slope = torch.where(u.abs() > 1, u.sign(), q - u)
    assert torch.allclose(alpha.grad, (g * slope).sum())


def test_ternary_weights():
    w = torch.randn(1000)
    out = quantize_weight(w, torch.tensor(1.0), weight_magnitudes(2))
    assert set(out.unique().tolist()) <= {-1.0, 0.0, 1.0}


def _fresh_output(conv, x):
    """The layer's output computed from scratch: a new layer with the same state."""
    twin = QuantConv2d(4, 8, 3, padding=1, bit=3)
    twin.load_state_dict(conv.state_dict())
    twin.weight_levels = conv.weight_levels.clone()
    with torch.no_grad():
        return twin.eval()(x)


@pytest.mark.parametrize("change", ["weight.data.add_", "sgd step on p.data", "alpha.data.fill_", "levels buffer"])
def test_no_stale_weight_after_data_writes(change):
    torch.manual_seed(0)
    conv = QuantConv2d(4, 8, 3, padding=1, bit=3).eval()
    x = torch.rand(2, 4, 8, 8)
    with torch.no_grad():
        before = conv(x)
        if change == "weight.data.add_":
            conv.weight.data.add_(torch.randn_like(conv.weight))
        elif change == "sgd step on p.data":
            for p in conv.parameters():
                p.data -= 0.5 * torch.randn_like(p)
        elif change == "alpha.data.fill_":
            conv.weight_alpha.data.fill_(1.0)
        else:
            conv.weight_levels = torch.tensor([0.0, 1.0])
        after = conv(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, _fresh_output(conv, x))


def test_frozen_weights_only_inside_the_block(tmp_path):
    from apot_utils.fakequant.layers import frozen_weights

    torch.manual_seed(0)
    conv = QuantConv2d(4, 8, 3, padding=1, bit=3).eval()
    x = torch.rand(2, 4, 8, 8)
    with torch.no_grad():
        plain = conv(x)
        with frozen_weights(conv):
            assert conv._frozen_weight is not None
            assert torch.equal(conv(x), plain)
        assert conv._frozen_weight is None
    torch.save(conv, tmp_path / "module.pt")
    assert "_frozen_weight" not in torch.load(tmp_path / "module.pt", weights_only=False).__dict__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits, scheme", [(2, "apot"), (3, "apot"), (4, "apot"), (5, "apot"), (6, "apot"), (4, "uniform"), (8, "apot")])
def test_division_by_alpha_folded_into_the_table(bits, scheme, dtype):
    """project(x, levels, divisor=α) == project(x / α, levels), bit for bit: random values, ±inf, NaN, ±0, and
    the products α · midpoint with their float neighbours (where the division's rounding decides)."""
    levels = projection_order(bits, scheme)
    g = torch.Generator().manual_seed(bits)
    for a in (0.37, 1.438, 7.9, 123.4):            # float64 bit patterns of α > 1 once overflowed the bisection
        alpha = torch.tensor(a, dtype=dtype)
        sorted_levels = levels.to(dtype).sort().values
        mids = (sorted_levels[1:] + sorted_levels[:-1]) / 2 * alpha
        x = torch.cat([torch.rand(50_000, generator=g, dtype=dtype) * a * 1.3 - 0.05 * a,
                       torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, a], dtype=dtype),
                       mids, torch.nextafter(mids, mids + 1), torch.nextafter(mids, mids - 1)])
        expected = project(x / alpha, levels, scale=alpha)
        folded = project(x, levels, scale=alpha, divisor=alpha)
        assert torch.equal(folded.nan_to_num(7.0), expected.nan_to_num(7.0)), a
    with pytest.raises(ValueError, match="finite positive"):
        project(x, levels, divisor=torch.tensor(0.0, dtype=dtype))


def test_projection_falls_back_to_eager_when_no_kernel_can_be_built(tmp_path, monkeypatch):
    """No C++ compiler, an unwritable kernel folder: one warning, the eager lookup, the same values."""
    def fail(*args):
        raise OSError("no compiler")
    monkeypatch.setenv("APOT_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(aot, "_build", fail)
    monkeypatch.setattr(projection, "_checked", {})
    levels = level_set(3)
    x = torch.rand(1 << 17) * 1.4 - 0.2
    with pytest.warns(UserWarning, match=r"fused kernel \(project tree\) is unavailable \(OSError: no compiler\)"):
        assert torch.equal(project(x, levels), nearest_level(x, levels))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # said once a process
        assert torch.equal(project(x, levels), nearest_level(x, levels))
