"""The weight and activation quantizers the layers call: the fused fast path
(:class:`apot_utils.fast.projection.FusedClippedProjection`), or the readable reference
(:class:`apot_utils.core.reference.ClipProjectScale`) inside
:func:`apot_utils.core.reference.reference_formulation`; the same values and gradients.

Shapes: any. α (``alpha``) is a 0-d tensor in the input's units (weights after normalization,
activations as they are), or for weights one per output channel ([C_out, 1, 1, 1]).
"""
from __future__ import annotations

import torch

from ..core.reference import ClipProjectScale, reference_active
from ..fast.projection import FusedClippedProjection, project


def _quantizer() -> type[torch.autograd.Function]:
    return ClipProjectScale if reference_active() else FusedClippedProjection


def _check_alpha(alpha: torch.Tensor, what: str) -> None:
    """A clipping threshold is a finite positive number (every element, per channel): 0 or less, NaN or infinity
    would give NaN or a model that computes nothing, silently."""
    if not bool((torch.isfinite(alpha) & (alpha > 0)).all()):
        raise ValueError(f"{what} α must be a finite positive number, got {alpha.detach().flatten()[:4].tolist()}")


def quantize_weight(w_normalized: torch.Tensor, alpha: torch.Tensor, magnitudes: torch.Tensor,
                    grad_scale: float = 1.0, clip_grad: bool = False) -> torch.Tensor:
    """Signed quantization of normalized weights: α · sign(c) · nearest(|c|), c = clip(w / α, −1, 1).
    magnitudes: the (b − 1)-bit set in tie order. ``clip_grad``: no gradient to weights beyond ±α. α must be
    finite and positive (a ValueError otherwise)."""
    _check_alpha(alpha, "the weight (or signed input)")
    return _quantizer().apply(w_normalized, alpha, magnitudes, True, grad_scale, clip_grad)


def quantize_activation(x: torch.Tensor, alpha: torch.Tensor, levels: torch.Tensor,
                        grad_scale: float = 1.0) -> torch.Tensor:
    """Unsigned quantization: α · nearest(clip(x / α, 0, 1)). Without autograd (inference) the division by
    α and the product with α are folded into the projection's thresholds: one pass, the same values."""
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        _check_alpha(alpha, "the activation")
        return _quantizer().apply(x, alpha, levels, False, grad_scale)
    return project(x, levels, scale=alpha.detach(), divisor=alpha)
