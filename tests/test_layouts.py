"""The fused kernels on every tensor layout: a view that is not dense row-major memory (expanded, sliced,
transposed, channels-last, offset into its storage) must give the values and gradients of the eager path
(``APOT_COMPILE=0``), forward and backward, above and below the size at which the fused kernels take over."""
import pytest
import torch

from apot_utils.fast import projection
from apot_utils.core.levels import projection_order, weight_projection_order
from apot_utils.core.reference import nearest_level
from apot_utils.fast.projection import project
from apot_utils.fakequant.quantizers import quantize_activation, quantize_weight

LARGE, SMALL = (4, 8, 64, 64), (2, 4, 8, 8)        # 131,072 values (fused) and 512 (eager below the threshold)
assert LARGE[0] * LARGE[1] * LARGE[2] * LARGE[3] >= projection._FUSED_MIN_NUMEL > SMALL[0] * SMALL[1] * SMALL[2] * SMALL[3]


def layouts(shape, seed):
    """name -> a tensor of ``shape`` (values in about [-0.5, 3.5]) in that memory layout."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape

    def values(*size):
        return torch.rand(*size, generator=g) * 4 - 0.5
    base = values(*shape)
    return {
        "contiguous": base,
        "expanded scalar": values(()).expand(shape),                                # every stride 0
        "expanded channel": values(1, c, 1, 1).expand(shape),                       # broadcast of a bias
        "sliced": values(n, c, h, 2 * w)[..., ::2],                                 # every other column
        "transposed": values(n, c, w, h).transpose(2, 3),
        "channels last": base.contiguous(memory_format=torch.channels_last),
        "offset storage": values(base.numel() + 7)[7:].view(shape),                 # starts 7 floats into its storage
        "narrowed": values(n + 1, c, h, w)[1:],
        "permuted": values(h, w, n, c).permute(2, 3, 0, 1),
    }


def _fused_available() -> bool:
    levels = projection_order(3)
    project(torch.rand(projection._FUSED_MIN_NUMEL), levels)
    return any(v is not None for k, v in projection._checked.items() if k[0].startswith("project"))


def _both_ways(fn, monkeypatch):
    """fn() with the fused kernels, then with APOT_COMPILE=0 (eager)."""
    fused = fn()
    with monkeypatch.context() as m:
        m.setenv("APOT_COMPILE", "0")
        eager = fn()
    return fused, eager


def _same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.fixture(scope="module", autouse=True)
def needs_fused_kernels():
    if not _fused_available():
        pytest.skip("fused kernels are not available here (no C++ compiler?): only the eager path exists")


@pytest.mark.parametrize("shape", [LARGE, SMALL], ids=["fused size", "eager size"])
@pytest.mark.parametrize("layout", list(layouts(SMALL, 0)))
@pytest.mark.parametrize("bits", [3, 5])     # the select tree (8 levels) and a larger tree (32 levels)
def test_forward_on_every_layout(layout, shape, bits, monkeypatch):
    x = layouts(shape, bits)[layout]
    levels, alpha = projection_order(bits), torch.tensor(2.5)
    for fn in (lambda: project(x / 3, levels), lambda: quantize_activation(x, alpha, levels),
               lambda: project(x, levels, scale=alpha, divisor=alpha)):
        fused, eager = _both_ways(fn, monkeypatch)
        assert fused.shape == x.shape
        _same(fused, eager)
    _same(quantize_activation(x, alpha, levels), nearest_level((x / alpha).clamp(0, 1).contiguous(), levels) * alpha)


@pytest.mark.parametrize("shape", [LARGE, SMALL], ids=["fused size", "eager size"])
@pytest.mark.parametrize("layout", list(layouts(SMALL, 0)))
@pytest.mark.parametrize("grad_layout", ["contiguous", "expanded scalar", "transposed", "channels last"])
def test_backward_on_every_layout(layout, grad_layout, shape, monkeypatch):
    """Input and upstream gradient in every layout: the activation and the weight quantizer's gradients
    (input and α) are those of the eager path; ``.sum().backward()`` hands the backward a stride-0 gradient."""
    levels, magnitudes = projection_order(3), weight_projection_order(3)
    grad_out = layouts(shape, 11)[grad_layout]

    def run():
        x = layouts(shape, 3)[layout].detach().requires_grad_()
        a = torch.tensor(2.0, requires_grad=True)
        quantize_activation(x, a, levels).backward(grad_out)
        w = layouts(shape, 5)[layout].detach().requires_grad_()
        b = torch.tensor(1.5, requires_grad=True)
        quantize_weight(w - 1.5, b, magnitudes).backward(grad_out)
        s = layouts(shape, 7)[layout].detach().requires_grad_()
        c = torch.tensor(1.0, requires_grad=True)
        quantize_activation(s, c, levels).sum().backward()
        return x.grad, a.grad, w.grad, b.grad, s.grad, c.grad

    for fused, eager in zip(*_both_ways(run, monkeypatch)):
        _same(fused, eager)
