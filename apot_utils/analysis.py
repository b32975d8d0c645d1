"""Measurements behind the level-set and quantizer chapters: quantization error against α,
the quantizer's forward and backward curves, a learnable α fitted by gradient descent, and
the activations a layer actually quantizes.

Weights here are *normalized* (zero mean, unit std per layer, as the quantizer sees them), so α
is in standard deviations (σ) and errors are in σ². Computations run in float64 so that printed
figures do not depend on the machine's summation order.
"""
from __future__ import annotations

import torch
from torch import nn

from . import checkpoints
from .layers import QuantConv2d
from .levels import SCHEMES, level_set, shift_add_terms, weight_magnitudes
from .quantize import normalize_weight, quantize_activation, quantize_weight

ALPHA_GRID = torch.arange(0.2, 8.0001, 0.05, dtype=torch.float64)   # σ, for the α search


def conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> weight [out, in, kh, kw] of every ``QuantConv2d`` (quantized or full precision)."""
    return {name: m.weight.detach() for name, m in model.named_modules() if isinstance(m, QuantConv2d)}


def pooled_normalized(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every layer normalized on its own, then flattened into one float64 vector [N]."""
    return torch.cat([normalize_weight(w.double()).flatten() for w in weights.values()])


def resnet20_weights(seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """The released full-precision ResNet-20's 3×3 convolution weights and where they came from.

    Without the checkpoint (offline, no ``APOT_DATA_DIR``): one seeded normal sample of the same
    size, said so in the returned description.
    """
    from .pipeline import load_model

    try:
        model = load_model("cifar10", "resnet20", 32, "release", log=lambda line: None)
        weights = conv_weights(model)
        count = sum(w.numel() for w in weights.values())
        return weights, f"released full-precision ResNet-20 ({len(weights)} convolutions, {count:,} weights)"
    except (checkpoints.CheckpointError, OSError) as missing:
        generator = torch.Generator().manual_seed(seed)
        sample = torch.randn(269_824, generator=generator, dtype=torch.float64)
        return {"normal sample": sample}, f"a normal sample (no released checkpoint: {missing})"


def quantization_mse(w: torch.Tensor, bits: int, scheme: str = "apot", alpha=3.0,
                     terms: int | None = None) -> torch.Tensor:
    """Mean squared error (σ²) of b-bit weight quantization of normalized weights w [N] at
    clipping threshold α (σ; a float, or a 1-D tensor of thresholds giving one error each)."""
    magnitudes = weight_magnitudes(bits, scheme, terms)
    alphas = torch.as_tensor(alpha, dtype=torch.float64)
    with torch.no_grad():
        errors = [(quantize_weight(w, a, magnitudes) - w).square().mean() for a in alphas.reshape(-1)]
    return torch.stack(errors).reshape(alphas.shape)


def best_alpha(w: torch.Tensor, bits: int, scheme: str = "apot", terms: int | None = None,
               grid: torch.Tensor = ALPHA_GRID) -> tuple[float, float]:
    """(α, error) minimizing :func:`quantization_mse` over ``grid`` (σ)."""
    errors = quantization_mse(w, bits, scheme, grid, terms)
    i = int(errors.argmin())
    return float(grid[i]), float(errors[i])


def error_table(w: torch.Tensor, bits=range(2, 7), schemes=SCHEMES) -> list[dict]:
    """For each bitwidth and scheme: levels, best α (σ), its error (σ²), and the error relative
    to APoT's at the same bitwidth. Rows in (bits, scheme) order."""
    rows = []
    for b in bits:
        found = {s: best_alpha(w, b, s) for s in schemes}
        for s in schemes:
            alpha, mse = found[s]
            rows.append({"bits": b, "scheme": s, "levels": 2**b - 1, "alpha": alpha, "mse": mse,
                         "vs_apot": mse / found["apot"][1] if "apot" in found else float("nan")})
    return rows


def cost_table(bits=range(2, 7)) -> list[dict]:
    """Levels of a b-bit set (activations 2^b, weights 2^b − 1) and the power-of-two terms
    one multiplication by a level costs under each scheme (:func:`shift_add_terms`)."""
    return [{"bits": b, "activation levels": 2**b, "weight levels": 2**b - 1,
             **{f"{s} terms": shift_add_terms(b, s) for s in SCHEMES}} for b in bits]


def print_rows(rows: list[dict], formats: dict[str, str] | None = None) -> None:
    """A plain aligned table of dict rows; ``formats``: column -> format spec."""
    formats = formats or {}
    cells = [[format(row[k], formats.get(k, "")) for k in rows[0]] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(rows[0])]
    print("  ".join(k.rjust(n) for k, n in zip(rows[0], widths)))
    for c in cells:
        print("  ".join(v.rjust(n) for v, n in zip(c, widths)))


def quantizer_curves(bits: int, scheme: str, alpha: float = 1.0, signed: bool = False,
                     points: int = 601) -> dict[str, torch.Tensor]:
    """Forward and backward of the activation (``signed=False``) or weight quantizer at one α,
    measured through autograd point by point.

    Returns x [points] over [-0.5α, 1.5α] (activations) or [-1.5α, 1.5α] (weights), and
    ``q`` (the forward), ``dq_dx`` and ``dq_dalpha`` (the gradients the backward pass gives).
    """
    low = -1.5 if signed else -0.5
    x = torch.linspace(low * alpha, 1.5 * alpha, points, dtype=torch.float64)
    levels = weight_magnitudes(bits, scheme) if signed else level_set(bits, scheme)
    fn = quantize_weight if signed else quantize_activation
    q, dq_dx, dq_da = [], [], []
    for value in x:
        xi = value.clone().requires_grad_(True)
        a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
        out = fn(xi, a, levels)
        gx, ga = torch.autograd.grad(out, (xi, a))
        q.append(out.detach())
        dq_dx.append(gx)
        dq_da.append(ga)
    return {"x": x, "q": torch.stack(q), "dq_dx": torch.stack(dq_dx), "dq_dalpha": torch.stack(dq_da)}


def fit_alpha(w: torch.Tensor, bits: int, scheme: str = "apot", init: float = 3.0, steps: int = 300,
              lr: float = 3.0) -> dict[str, list[float]]:
    """Learn α by plain gradient descent on the quantization error of normalized weights w [N],
    through the quantizer's own α gradient (the release's straight-through rule).

    Returns the trajectory: ``alpha`` (σ) and ``mse`` (σ²) before every step, and after the last.
    """
    alpha = torch.tensor(init, dtype=torch.float64, requires_grad=True)
    magnitudes = weight_magnitudes(bits, scheme)
    optimizer = torch.optim.SGD([alpha], lr=lr)
    trajectory = {"alpha": [], "mse": []}
    for step in range(steps + 1):
        loss = (quantize_weight(w, alpha, magnitudes) - w).square().mean()
        trajectory["alpha"].append(alpha.item())
        trajectory["mse"].append(loss.item())
        if step < steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return trajectory


def layer_inputs(model: nn.Module, layer: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the quantized layer ``layer`` receives for a batch of images [B, 3, H, W] and what
    it turns that into: (input activations, quantized activations), both [B, C, H', W']."""
    module = dict(model.named_modules())[layer]
    if not isinstance(module, QuantConv2d) or not module.quantized:
        raise ValueError(f"{layer} is not a quantized QuantConv2d")
    seen = {}
    handle = module.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        handle.remove()
    x = seen["x"]
    with torch.no_grad():
        return x, quantize_activation(x, module.act_alpha, module.act_levels)
