"""Post-training quantization: a quantized model from a full-precision one, without training.

``post_training_quantize`` copies a full-precision model's weights into a b-bit model and chooses
every clipping threshold from data instead of learning it:

- weight α, per layer (or per output channel, ``per_channel``): the α (σ) that minimizes the mean
  squared error of the layer's (channel's) normalized weights against their quantized values, to
  0.01 σ (:func:`~apot_utils.fakequant.alpha_search.weight_alpha`);
- activation α, layer by layer in the order the forward runs them, on the inputs each layer receives for the
  calibration images *with every earlier layer already quantized*: the α minimizing the mean
  squared quantization error of those inputs ('mse'), or a high percentile of them ('percentile');
- BatchNorm running statistics carried over to the quantized network (:func:`_transfer_batchnorm`).
  This step is needed: the quantizer normalizes each layer's weights and never multiplies σ
  back (the release's design: BatchNorm absorbs the scale), so a quantized convolution's output is
  about 1/σ times the full-precision one (σ ≈ 0.01–0.1) and the full-precision statistics no longer
  fit. ``Calibration(batchnorm="recalibrate")`` instead re-estimates them plainly on the calibration
  images, which also imports those images' own statistics (on the JPEG copy of the training set: several
  points lost); ``batchnorm="keep"`` leaves the full-precision statistics as they are (an ablation: what
  the transfer is for).

Calibration images come from the *training* set: choosing α on test images would leak them
into the accuracy reported on those same images.

The calibration computes in float64 (the model and the images cast for it, the model cast back at the end).
In float32 its choices followed the CPU: another summation order moves a few activations to the next level,
upstream changes reach the few large values that decide the clipping error, and where the error curve is flat
the least error jumps from one end of it to the other (a 5-bit per-channel layer's α moved by 9 % between
AVX-512 and AVX2 arithmetic). In float64 those roundings are 2^29 times finer: the same images give the same α
on every machine (``tests/test_portability.py`` checks it under three arithmetics).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..core.checks import check_count
from ..fast.projection import project
from .capture import capturing_inputs
from .im2col import im2col_convolutions
from .layers import quantized_layers
from .alpha_search import coarse_to_fine, weight_alpha
from .spec import ModelSpec

ACT_ALPHA_STEP = 0.01                     # activation α: fractions of the largest input seen, to this resolution
ACT_RULES = ("mse", "percentile")
BATCHNORM_RULES = ("transfer", "recalibrate", "keep")
# The weight normalization ``quantize`` uses unless told (ModelSpec's default stays the releases' 'mean_std', which
# their files and every model trained here were made with): the one that measured best in post-training
# quantization (checkpoints/scheme_comparison/ptq_ablation.json).
PTQ_WEIGHT_NORM = "channel_std"
# The number of APoT terms ``quantize`` uses at a bitwidth unless told, where it differs from the release's rule
# ceil(b / 2) (ModelSpec's default): chosen on held-out training images (ptq_ablation.json, ``chosen_terms_8bit``).
PTQ_TERMS: dict[int, int] = {8: 7}
MAX_ACT_SAMPLES = 1 << 20      # activations per layer the α search looks at (a seeded sample)


def post_training_spec(dataset: str, arch: str, bit: int, scheme: str = "apot", terms: int | None = None,
                       per_channel: bool = False, weight_norm: str | None = None) -> ModelSpec:
    """The model post-training quantization makes unless told otherwise (``quantize`` uses it): ``weight_norm``
    None is :data:`PTQ_WEIGHT_NORM`, and ``terms`` None at a bitwidth :data:`PTQ_TERMS` names is its n (APoT);
    everything else as :class:`ModelSpec` (whose own defaults stay the releases')."""
    if terms is None and scheme == "apot":
        terms = PTQ_TERMS.get(bit)
    return ModelSpec(dataset, arch, bit, scheme, terms, per_channel,
                     PTQ_WEIGHT_NORM if weight_norm is None else weight_norm)


@dataclass(frozen=True)
class Calibration:
    """How α and BatchNorm's statistics are chosen. act_rule: 'mse' or 'percentile' (then ``percentile``,
    in %, of the layer's inputs). batchnorm: 'transfer' (carry the full-precision statistics over to the
    quantized model, :func:`_transfer_batchnorm`), 'recalibrate' (transfer them while the α are chosen, then
    re-estimate them on the calibration images) or 'keep' (leave the full-precision statistics unchanged
    throughout, the α chosen on what the layers then receive). batch_size: images per forward of the
    'recalibrate' pass (the α are chosen in one forward over all the calibration images, :func:`calibrate`).
    seed: the draw of the activations the α search looks at when a layer receives more than
    :data:`MAX_ACT_SAMPLES`."""
    act_rule: str = "mse"
    percentile: float = 99.99
    batchnorm: str = "transfer"
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.act_rule not in ACT_RULES:
            raise ValueError(f"act_rule must be one of {ACT_RULES}, got {self.act_rule!r}")
        if self.batchnorm not in BATCHNORM_RULES:
            raise ValueError(f"batchnorm must be one of {BATCHNORM_RULES}, got {self.batchnorm!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        check_count("batch_size", self.batch_size, allow_none=False)


def activation_alpha(x: torch.Tensor, levels: torch.Tensor, calibration: Calibration) -> float:
    """α for non-negative inputs x (any shape) and the unsigned set ``levels``, by the calibration's rule."""
    x = x.detach().flatten().double()
    if x.numel() > MAX_ACT_SAMPLES:
        pick = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(calibration.seed))[:MAX_ACT_SAMPLES]
        x = x[pick]
    top = float(x.max())
    if not top > 0:
        raise ValueError("it received only zeros (or non-finite values) on the calibration images")
    if calibration.act_rule == "percentile":
        alpha = float(torch.quantile(x, calibration.percentile / 100))
        if not alpha > 0:
            zeros = 100 * float((x == 0).double().mean())
            raise ValueError(f"the {calibration.percentile:g}th percentile of its input activations is 0 ({zeros:.1f} % "
                             f"of them are 0): choose a percentile above {zeros:.1f} or the mse rule")
        return alpha

    def error(fraction: float) -> float:
        with torch.no_grad():
            alpha = torch.tensor(fraction * top, dtype=x.dtype)    # project(x / α) · α: quantize_activation's
            return float((project(x / alpha, levels) * alpha - x).square().mean())   # values, one table for all α

    return float(coarse_to_fine(lambda f: torch.tensor([error(float(f[0]))]), ACT_ALPHA_STEP, 1.0, ACT_ALPHA_STEP)[0]) * top


def _channel_moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of y [N, C, H, W], in float64."""
    y = y.double().transpose(0, 1).flatten(1)
    return y.mean(1), y.var(1, unbiased=False)


def _transfer_batchnorm(norm: nn.BatchNorm2d, fp_running: tuple[torch.Tensor, torch.Tensor],
                        fp_calib: tuple[torch.Tensor, torch.Tensor], q_calib: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Running statistics for the quantized network's BatchNorm ``norm``.

    The full-precision model normalizes its input y with running statistics (m, v) of its training
    images. On the calibration images its y has moments (m̂, v̂), the quantized model's y_q has
    (m̂_q, v̂_q). The new statistics put y_q where y was relative to its own statistics:
    √v_q = √v̂_q · √(v / v̂), m_q = m̂_q − √v_q · (m̂ − m) / √v. With no quantization they are (m, v)
    again, whatever the calibration images; so images from another source (the JPEG copy) do not
    move the statistics the way plain re-estimation on them does.
    """
    (m, v), (m_hat, v_hat), (mq_hat, vq_hat) = fp_running, fp_calib, q_calib
    eps = norm.eps
    std_q = (vq_hat + eps).sqrt() * ((v + eps) / (v_hat + eps)).sqrt()
    mean_q = mq_hat - std_q * (m_hat - m) / (v + eps).sqrt()
    norm.running_mean.copy_(mean_q.to(norm.running_mean.dtype))
    norm.running_var.copy_((std_q.square() - eps).clamp(min=0).to(norm.running_var.dtype))


def _recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Running mean and variance of every BatchNorm as the plain average over the calibration batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None            # cumulative average
    model.train()
    try:
        with torch.no_grad():
            for images in batches:
                model(images)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()


def post_training_quantize(full_precision: nn.Module, spec: ModelSpec, images: torch.Tensor,
                           calibration: Calibration = Calibration(), log: Callable[[str], None] = print) -> nn.Module:
    """The quantized model ``spec`` describes (its bit, scheme, terms and per-channel α) with
    ``full_precision``'s weights and α chosen from ``images``.

    full_precision: a model of the same architecture at bit 32 (its weights and BatchNorm are
    copied, it is not changed). images: normalized calibration images [N, 3, H, W], N >= 1, from
    the training set. Returns the quantized model in eval mode on the CPU.
    """
    if not spec.quantized:
        raise ValueError("post-training quantization needs a bitwidth of 2..8, not 32 (full precision)")
    if quantized_layers(full_precision):
        raise ValueError("the starting model is already quantized: post-training quantization starts from a "
                         "full-precision (32-bit) checkpoint")
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"calibration images must be a non-empty batch [N, 3, H, W], got shape {tuple(images.shape)}")
    model = spec.build()
    missing, unexpected = model.load_state_dict(full_precision.state_dict(), strict=False)
    if unexpected or any(not k.endswith("alpha") for k in missing):
        raise ValueError(f"the full-precision model does not fit {spec.arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return calibrate(model, full_precision, images, calibration, log)


def calibrate(model: nn.Module, full_precision: nn.Module, images: torch.Tensor,
              calibration: Calibration = Calibration(), log: Callable[[str], None] = print) -> nn.Module:
    """Post-training calibration of a quantized ``model`` that holds ``full_precision``'s weights (a built
    :class:`ModelSpec`, or any model from :func:`apot_utils.fakequant.convert.convert`): every weight α by
    least squared error, every input α by the calibration's rule in the order the forward runs the layers, and
    BatchNorm by the calibration's rule. A signed layer's input α is fitted to |x| against its magnitude set (the error of a
    sign-symmetric set is that of the magnitudes). images: normalized calibration images [N, ...], N >= 1,
    from the training set. Computed in float64 (module docstring), ``full_precision`` untouched. Returns
    ``model``, changed in place, in eval mode on the CPU, in its own floating dtype."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"calibration images must be one tensor [N, ...], got a {type(images).__name__} "
                        "(torch.stack a list of images first)")
    if images.dim() < 2 or len(images) == 0:
        raise ValueError(f"calibration images must be a non-empty batch [N, ...], got shape {tuple(images.shape)}")
    theirs = dict(full_precision.named_modules())

    def shape(m: nn.Module):            # a BatchNorm without affine parameters has no weight
        return ("BatchNorm", m.num_features) if isinstance(m, nn.BatchNorm2d) else tuple(m.weight.shape)

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) and (
                name not in theirs or not isinstance(theirs[name], (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
                or shape(theirs[name]) != shape(m)):
            raise ValueError(f"full_precision is not the model that was converted: its {name!r} is "
                             f"{'missing' if name not in theirs else type(theirs[name]).__name__ + ' of another shape'}")
    dtype = next(model.parameters()).dtype
    model, full_precision = model.cpu().eval(), copy.deepcopy(full_precision).cpu().eval().double()
    try:
        with im2col_convolutions(model, full_precision):
            return _calibrate(model.double(), full_precision, images, calibration, log)
    finally:
        model.to(dtype)                 # also when a layer's α cannot be chosen: the caller's model keeps its dtype


def _calibrate(model: nn.Module, full_precision: nn.Module, images: torch.Tensor, calibration: Calibration,
               log: Callable[[str], None]) -> nn.Module:
    """:func:`calibrate`'s work on float64 models, in one forward pass of each model over all the images.

    The full-precision pass records the moments of what each of its BatchNorms receives. In the quantized pass a
    forward pre-hook finishes each quantized layer (its input α) and BatchNorm (its transferred statistics) just
    before that module first computes, from what it receives: every module upstream of it is then final, in the
    order the forward runs, whatever the model's graph. All images go through as one batch, because a layer's α is
    chosen from all of its inputs at once (the memory of one forward over them)."""
    layers = dict(quantized_layers(model))
    for layer in layers.values():
        layer.weight_alpha.data.copy_(weight_alpha(layer))
    images = images.cpu().double()
    transfer = calibration.batchnorm != "keep"
    fp_moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if transfer:
        fp_norms = {m: name for name, m in full_precision.named_modules() if isinstance(m, nn.BatchNorm2d)}

        def record(norm: nn.BatchNorm2d, x: torch.Tensor) -> None:
            fp_moments.setdefault(fp_norms[norm], _channel_moments(x))

        with capturing_inputs(fp_norms, record), torch.no_grad():
            full_precision(images)
    names, fp_modules = {m: name for name, m in model.named_modules()}, dict(full_precision.named_modules())
    finished: set[nn.Module] = set()

    def finish(module: nn.Module, x: torch.Tensor) -> None:
        if module in finished:                  # a module run twice is calibrated on its first input
            return
        finished.add(module)
        name = names[module]
        if isinstance(module, nn.BatchNorm2d):
            if name not in fp_moments:
                raise ValueError(f"{name}: the full-precision model's BatchNorm of that name never ran")
            fp_norm = fp_modules[name]
            _transfer_batchnorm(module, (fp_norm.running_mean.double(), fp_norm.running_var.double()),
                                fp_moments[name], _channel_moments(x))
            return
        try:
            alpha = activation_alpha(x.abs() if module.signed else x, module.act_levels, calibration)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        module.act_alpha.data.fill_(alpha)
        spread = (f" (per channel {module.weight_alpha.min().item():.2f}–{module.weight_alpha.max().item():.2f})"
                  if module.per_channel else "")
        log(f"{name}: weight alpha {module.weight_alpha.mean().item():.3f} σ{spread}, act alpha {module.act_alpha.item():.3f}"
            + (" (signed input)" if module.signed else ""))

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)] if transfer else []
    with capturing_inputs([*layers.values(), *norms], finish), torch.no_grad():
        model(images)
    never = [name for name, layer in layers.items() if layer not in finished]
    if never:
        raise ValueError(f"{', '.join(never)}: never ran in the model's forward pass, so no input α can be chosen")
    if calibration.batchnorm == "recalibrate":
        _recalibrate_batchnorm(model, list(images.split(calibration.batch_size)))
    return model
