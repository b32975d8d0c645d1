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

from ..core.levels import (FULL_PRECISION, SCHEMES, default_terms, integer_levels, level_set, max_set_bits, projection_order,
                           term_exponents, weight_magnitudes, weight_projection_order)
from ..core.reference import normalize_weight
from ..fakequant.capture import capturing_inputs, input_to
from ..fakequant.layers import QuantConv2d, frozen_weights, quantized_layers
from ..fakequant.loading import load_model
from ..fakequant.alpha_search import weight_mse
from ..fakequant.quantizers import quantize_activation, quantize_weight
from ..fakequant.spec import ModelSpec
from ..files import checkpoints

ALPHA_GRID = torch.arange(0.2, 8.0001, 0.05, dtype=torch.float64)   # σ, for the α search


def conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> weight [out, in, kh, kw] of every ``QuantConv2d`` (quantized or full precision)."""
    return {name: m.weight.detach() for name, m in model.named_modules() if isinstance(m, QuantConv2d)}


def pooled_normalized(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every layer normalized on its own, then flattened into one float64 vector [N]."""
    return torch.cat([normalize_weight(w.double()).flatten() for w in weights.values()])


def resnet20_weights(seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """The released full-precision ResNet-20's 3×3 convolution weights and where they came from.

    Without the checkpoint (offline, no ``APOT_DATA_DIR``): the same layers of a ResNet-20 initialized
    at random (seeded), said so in the returned description, so that code using the layer names runs.
    """
    with torch.random.fork_rng():           # building a model draws random weights: leave the caller's state alone
        try:
            model = load_model("cifar10", "resnet20", FULL_PRECISION, "release", log=lambda line: None)
            what = "released full-precision ResNet-20"
        except (checkpoints.CheckpointError, OSError) as missing:
            torch.manual_seed(seed)
            model = ModelSpec("cifar10", "resnet20", FULL_PRECISION).build()
            what = f"randomly initialized ResNet-20, no released checkpoint: {missing};"
    weights = conv_weights(model)
    return weights, f"{what} ({len(weights)} quantized convolutions, {sum(w.numel() for w in weights.values()):,} weights)"


def quantization_mse(w: torch.Tensor, bits: int, scheme: str = "apot", alpha=3.0,
                     terms: int | None = None) -> torch.Tensor:
    """Mean squared error (σ²) of b-bit weight quantization of normalized weights w [N] at
    clipping threshold α (σ; a float, or a 1-D tensor of thresholds giving one error each)."""
    magnitudes = weight_magnitudes(bits, scheme, terms)
    alphas = torch.as_tensor(alpha, dtype=torch.float64)
    errors = [weight_mse(w, a, magnitudes) for a in alphas.reshape(-1)]
    return torch.stack(errors).reshape(alphas.shape)


def best_alpha(w: torch.Tensor, bits: int, scheme: str = "apot", terms: int | None = None,
               grid: torch.Tensor = ALPHA_GRID) -> tuple[float, float]:
    """(α, error) minimizing :func:`quantization_mse` over ``grid`` (σ): the lowest point of the error curve the
    chapters draw. Post-training quantization searches finer, to 0.01 σ
    (:func:`apot_utils.fakequant.ptq.best_weight_alpha`), on the same error."""
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
    """Per bitwidth b: the levels of the activation set (2^b) and of the signed weight set (2^b − 1,
    magnitudes of b − 1 bits), and the power-of-two terms (shift-adds) one multiplication by a level costs,
    for each operand: APoT with the release's terms, PoT (one), uniform (up to one per magnitude bit)."""
    rows = []
    for b in bits:
        rows.append({"b": b, "act levels": 2**b, "weight levels": 2**b - 1,
                     "APoT act terms": max_set_bits(b), "APoT weight terms": max_set_bits(b - 1),
                     "PoT terms": 1, "uniform act terms": b, "uniform weight terms": b - 1})
    return rows


def integer_form(bits: int) -> dict:
    """The b-bit APoT set before γ: every level is an integer multiple of 2^-E (E the largest exponent of
    its terms) with at most n set bits. Returns E, n, the integers [2^b] and the largest number of set bits."""
    exponents = term_exponents(bits, default_terms(bits))
    return {"E": max(max(e) for e in exponents if e), "n": len(exponents), "integers": integer_levels(bits).tolist(),
            "max set bits": max_set_bits(bits)}


def public_rows(rows: list[dict]) -> list[dict]:
    """Rows of :func:`apot_utils.integer.costs.layer_rows` without their private columns (``_``-prefixed), for printing."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


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
    magnitudes = weight_magnitudes(bits, scheme)
    return descend_alpha(lambda alpha: (quantize_weight(w, alpha, magnitudes) - w).square().mean(), init, steps, lr)


def descend_alpha(error, init: float, steps: int, lr: float) -> dict[str, list[float]]:
    """Plain gradient descent (SGD, no momentum) on a 0-d α, minimizing ``error(alpha)`` through
    whatever gradient the quantizer inside it defines. Returns ``alpha`` and ``mse`` (the error)
    before every step and after the last."""
    alpha = torch.tensor(float(init), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([alpha], lr=lr)
    trajectory = {"alpha": [], "mse": []}
    for step in range(steps + 1):
        loss = error(alpha)
        trajectory["alpha"].append(alpha.item())
        trajectory["mse"].append(loss.item())
        if step < steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return trajectory


def layer_inputs(model: nn.Module, layer: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the quantized layer ``layer`` receives for a batch of images [B, 3, H, W] and what
    it turns that into (its unsigned or signed input set): (input activations, quantized activations), both
    [B, C, H', W']."""
    module = dict(model.named_modules())[layer]
    if not isinstance(module, QuantConv2d) or not module.quantized:
        raise ValueError(f"{layer} is not a quantized QuantConv2d")
    x = input_to(model.eval(), module, images)
    with torch.no_grad():
        return x, module._quantized_input(x)


ALPHA_RULES = ("RCF", "PACT", "LSQ")


def _pact_quantize(x: torch.Tensor, alpha: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """PACT (Choi et al. 2018): y = clip(x, 0, α), then its rounding passed straight through, so that
    ∂q/∂α is 1 where x > α and 0 everywhere else."""
    y = torch.minimum(x.clamp(min=0), alpha)
    rounded = quantize_activation(x.detach(), alpha.detach(), levels)
    return y + (rounded - y).detach()


def _rule_quantizer(rule: str, bits: int, elements: int, scheme: str):
    """quantize(x, α) on the b-bit ``scheme`` levels with the α gradient of ``rule``, for a tensor of
    ``elements`` inputs. RCF: the release's quantizer. PACT: its clip-then-round gradient. LSQ (Esser et
    al. 2020): the RCF gradient scaled by 1 / sqrt(N · (2^b − 1)), N the inputs (its gradient scale).
    The forward is the same for all three."""
    levels = level_set(bits, scheme)
    if rule == "RCF":
        return lambda x, a: quantize_activation(x, a, levels)
    if rule == "PACT":
        return lambda x, a: _pact_quantize(x, a, levels)
    if rule == "LSQ":
        scale = 1.0 / (elements * (2**bits - 1)) ** 0.5
        return lambda x, a: quantize_activation(x, a, levels, grad_scale=scale)
    raise ValueError(f"rule must be one of {ALPHA_RULES}, got {rule!r}")


def alpha_gradient(rule: str, bits: int = 3, scheme: str = "uniform", points: int = 801) -> dict[str, torch.Tensor]:
    """∂q/∂α of one input x at α = 1 under ``rule`` (:data:`ALPHA_RULES`) on the ``scheme`` levels,
    measured through autograd, for x from -0.25 to 1.5 (units of α). LSQ's gradient is shown without its
    1/sqrt(N·(2^b − 1)) scale, which depends on the size N of the tensor. Returns u [points] and grad [points]."""
    u = torch.linspace(-0.25, 1.5, points, dtype=torch.float64)
    quantize = _rule_quantizer(rule, bits, 1, scheme)
    unscale = (2**bits - 1) ** 0.5 if rule == "LSQ" else 1.0
    grads = []
    for value in u:
        a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        grads.append(torch.autograd.grad(quantize(value.view(1), a).sum(), a)[0] * unscale)
    return {"u": u, "grad": torch.stack(grads)}


def fit_activation_alpha(x: torch.Tensor, bits: int, rule: str, init: float, steps: int = 200,
                         lr: float = 0.05, scheme: str = "uniform") -> dict[str, list[float]]:
    """Learn α for activations x (any shape, non-negative) on the b-bit ``scheme`` levels by gradient
    descent (:func:`descend_alpha`) on the mean squared quantization error, with the α gradient of
    ``rule``. Returns α and the error before every step and after the last."""
    x = x.detach().flatten().double()
    quantize = _rule_quantizer(rule, bits, x.numel(), scheme)
    return descend_alpha(lambda alpha: (quantize(x, alpha) - x).square().mean(), init, steps, lr)


def midpoint_census(model: nn.Module, images: torch.Tensor) -> list[dict]:
    """For every quantized layer: how many of the activations it quantizes for ``images`` lie exactly on a
    midpoint between two of its levels (float32: equally far from both), where the tie order decides."""
    rows = []
    for name, layer in quantized_layers(model):
        x, _ = layer_inputs(model, name, images)
        u = (x / layer.act_alpha.detach()).clamp(0, 1).flatten()
        levels = layer.act_levels.sort().values.to(u.dtype)
        below = levels[torch.searchsorted(levels, u, right=True).clamp(1, len(levels) - 1) - 1]
        above = levels[torch.searchsorted(levels, u, right=True).clamp(1, len(levels) - 1)]
        ties = ((u - below).abs() == (above - u).abs()) & (u > below) & (u < above)
        rows.append({"layer": name, "activations": u.numel(), "on a midpoint": int(ties.sum())})
    return rows


def loss_with_tie_order(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, order: str) -> float:
    """Cross-entropy of ``model`` on one batch with its levels listed in ``order``: 'release' (the
    release's tie order, the default) or 'lower' (sorted: every midpoint goes to the lower level)."""
    layers = [m for _, m in quantized_layers(model)]
    saved = [(m.act_levels, m.weight_levels) for m in layers]
    try:
        for m in layers:
            if order == "lower":
                m.act_levels, m.weight_levels = m.act_levels.sort().values, m.weight_levels.sort().values
            elif order == "release":
                m.act_levels, m.weight_levels = projection_order(m.bit, m.scheme), weight_projection_order(m.bit, m.scheme)
            else:
                raise ValueError(f"order must be 'release' or 'lower', got {order!r}")
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model.eval()(images), labels))
    finally:
        for m, (act, weight) in zip(layers, saved):
            m.act_levels, m.weight_levels = act, weight


def with_full_precision_fc(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose last layer is a plain full-precision ``nn.Linear`` with the same weights,
    to compare with the 8-bit last layer the release's code runs."""
    import copy

    twin = copy.deepcopy(model)
    plain = nn.Linear(model.fc.in_features, model.fc.out_features)
    plain.load_state_dict(model.fc.state_dict())
    twin.fc = plain.to(model.fc.weight.device)
    return twin


def nearest_midpoints(model: nn.Module, images: torch.Tensor, index: int, count: int = 5) -> list[dict]:
    """The ``count`` activations of ``images[index]`` that lie nearest to a midpoint between two levels, over every
    quantized layer of ``model`` (run on the batch ``images`` [N, 3, H, W], weights frozen as in validation), and
    what each does to the prediction: ``layer``, ``position`` (flat index into that layer's input), ``u`` (input / α),
    ``midpoint``, ``distance`` = u − midpoint (units of α), ``ulps`` (that distance in float32 steps at the
    midpoint), ``prediction`` (the image's predicted class) and ``if_flipped`` (its prediction when only this
    activation is moved to the other side of the midpoint, to the level the other arithmetic would pick)."""
    found = []
    layers = quantized_layers(model)
    names = {m: n for n, m in layers}

    def census(module, x):
        name = names[module]
        u = (x[index] / module.act_alpha).reshape(-1).double()
        levels = module.act_levels.double().sort().values
        mids = (levels[1:] + levels[:-1]) / 2
        distance, which = (u[:, None] - mids).abs().min(1)
        for position in distance.argsort()[:count].tolist():
            mid = mids[which[position]].item()
            ulp = (torch.nextafter(torch.tensor(mid, dtype=torch.float32), torch.tensor(2.0)) - mid).item()
            found.append({"layer": name, "position": position, "u": u[position].item(), "midpoint": mid,
                          "distance": u[position].item() - mid, "ulps": (u[position].item() - mid) / ulp})

    model.eval()
    with frozen_weights(model), torch.no_grad():
        with capturing_inputs(names, census):
            prediction = int(model(images)[index].argmax())
        found = sorted(found, key=lambda r: abs(r["distance"]))[:count]
        for row in found:
            def flip(module, args, row=row):
                x = args[0].clone()
                mirrored = row["midpoint"] - row["distance"]         # the same distance on the other side
                x[index].view(-1)[row["position"]] = mirrored * module.act_alpha
                return (x,)
            handle = model.get_submodule(row["layer"]).register_forward_pre_hook(flip)
            try:
                row["prediction"], row["if_flipped"] = prediction, int(model(images)[index].argmax())
            finally:
                handle.remove()
    return found
