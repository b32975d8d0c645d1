"""Solutions of chapter 04's exercises (do them before you read this)."""
from __future__ import annotations

import torch

import apot_utils as apot


def my_weight_alpha(weight: torch.Tensor, bit: int, grid: torch.Tensor) -> float:
    """The α (σ) of ``grid`` with the least mean squared error of the layer's normalized weights,
    Ŵ = (W − μ)/σ, against their b-bit quantized values α · sign · nearest(clip(|Ŵ|/α, 0, 1)) on the (b − 1)-bit
    magnitude set; the first of equal errors wins. Returns a float."""
    w = apot.normalize_weight(weight.detach())
    magnitudes = apot.weight_magnitudes(bit)
    errors = torch.stack([(apot.quantize_weight(w, alpha.to(w.dtype), magnitudes) - w).square().mean()
                          for alpha in grid])
    return float(grid[errors.argmin()])
