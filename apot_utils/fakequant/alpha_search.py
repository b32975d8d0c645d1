"""The searches for a clipping threshold: :func:`coarse_to_fine` (a grid search, many independent rows at once) and
the weight α with the least squared error of a layer's (or each channel's) normalized weights, computed from the
sorted weights (:class:`SortedRows`) with near ties decided by quantizing them. Post-training quantization
(:mod:`apot_utils.fakequant.ptq`) uses both; the weight α depends on the weights alone, not on data."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..core.reference import normalize_weight
from .layers import QuantConv2d, quantized_layers
from .quantizers import quantize_weight

WEIGHT_ALPHA_RANGE = (0.5, 8.0)          # σ: weight α is searched in this range ...
WEIGHT_ALPHA_STEP = 0.01                  # ... to this resolution


def coarse_to_fine(error: Callable[[torch.Tensor], torch.Tensor], low: float, high: float, step: float,
                   rows: int = 1, coarse: int = 10, exact: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   ) -> torch.Tensor:
    """``rows`` independent searches at once: for each, the point of [low, high], to ``step``, where its error is
    least, on a grid ``coarse`` times coarser first and then finely around that row's best coarse point (about
    1/coarse of the evaluations of a full fine grid; the first of equal errors wins). ``error`` maps candidate
    points [rows] (float64, one per row) to their errors [rows]. ``exact``: the same error computed the slow,
    direct way; where ``error``'s values come within :data:`NEAR` (relative) of a row's least, those candidates
    are decided by ``exact``, so that a faster ``error`` with other roundings chooses what ``exact`` would.
    Returns the points [rows], float64."""
    grid = torch.arange(low, high + step / 2, step * coarse, dtype=torch.float64)
    coarse_points = grid.view(-1, 1).expand(-1, rows)
    errors = _decided(torch.stack([error(points) for points in coarse_points]), coarse_points, exact)
    best = grid[errors.argmin(0)]
    start = (best - step * coarse).clamp(min=low)
    stop = (best + step * coarse).clamp(max=high) + step / 2
    count = ((stop - start) / step).ceil().long()            # torch.arange(start, stop, step)'s length, per row
    fine = torch.stack([start + j * step for j in range(int(count.max()))])                     # [J, rows]
    fine_errors = torch.stack([torch.where(j < count, error(points), torch.inf) for j, points in enumerate(fine)])
    fine_errors = _decided(fine_errors, fine, exact)
    return fine[fine_errors.argmin(0), torch.arange(rows)]


NEAR = 1e-8      # relative: far above SortedRows' rounding (about 1e-10), far below a 0.01 σ step's change of error


def _decided(errors: torch.Tensor, points: torch.Tensor, exact) -> torch.Tensor:
    """errors [J, rows] of points [J, rows]; where several come within NEAR of a row's least, those of the row are
    replaced by ``exact``'s and the others by infinity (no change without ``exact`` or without such a near tie)."""
    if exact is None:
        return errors
    least = errors.min(0).values
    near = errors <= least + NEAR * least.abs()
    tied = near.sum(0) > 1
    if not bool(tied.any()):
        return errors
    out = errors.clone()
    out[:, tied] = torch.inf
    for j in torch.nonzero(near[:, tied].any(1)).flatten().tolist():
        rows_here = tied & near[j]
        out[j, rows_here] = exact(points[j])[rows_here]
    return out


def weight_mse(w: torch.Tensor, alpha: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """Mean squared error (σ²) of normalized weights ``w`` (any shape) quantized to the signed set of
    ``magnitudes`` at clipping threshold ``alpha`` (σ; 0-d, of w's dtype)."""
    with torch.no_grad():
        return (quantize_weight(w, alpha, magnitudes) - w).square().mean()


class SortedRows:
    """The mean squared error of quantizing each row of ``rows`` [R, K] to the signed set of ``magnitudes`` at a
    clipping threshold α per row, without quantizing anything: the |w| of each row sorted once, with prefix sums of
    |w| and |w|², so that the weights nearest to level m (α·m, clipped ones to α) are one slice [lo, hi) of the
    sorted row and contribute Σ(|w| − mα)² = S₂ − 2mα·S₁ + (mα)²·n. An evaluation costs O(R·L·log K) instead of
    :func:`weight_mse`'s O(R·K) (L levels); equal to it up to float64 rounding (a weight exactly between two
    levels is as far from either, so ties do not matter). Computed in float64."""

    def __init__(self, rows: torch.Tensor, magnitudes: torch.Tensor):
        a = rows.detach().double().abs().sort(dim=1).values                   # [R, K]
        zero = a.new_zeros(len(a), 1)
        self.sorted, self.count = a, a.shape[1]
        self.s1 = torch.cat([zero, a.cumsum(1)], 1)                            # [R, K + 1]
        self.s2 = torch.cat([zero, a.square().cumsum(1)], 1)
        self.levels = magnitudes.detach().double().sort().values              # [L], the largest is 1

    def __call__(self, alphas: torch.Tensor) -> torch.Tensor:
        """alphas [R] (σ) -> mean squared error [R] of each row at its α."""
        alpha = alphas.double().view(-1, 1)                                    # [R, 1]
        midpoints = (self.levels[1:] + self.levels[:-1]) / 2 * alpha          # [R, L − 1] decision thresholds
        edges = torch.searchsorted(self.sorted, midpoints.contiguous())       # first index at or above each
        full = self.sorted.new_full((len(alpha), 1), self.count, dtype=torch.long)
        bounds = torch.cat([torch.zeros_like(full), edges, full], 1)          # [R, L + 1]
        n = (bounds[:, 1:] - bounds[:, :-1]).double()
        s1 = self.s1.gather(1, bounds[:, 1:]) - self.s1.gather(1, bounds[:, :-1])
        s2 = self.s2.gather(1, bounds[:, 1:]) - self.s2.gather(1, bounds[:, :-1])
        value = self.levels.view(1, -1) * alpha                               # [R, L] level values
        return (s2 - 2 * value * s1 + value.square() * n).sum(1).clamp(min=0) / self.count


def best_weight_alphas(rows: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """For each row of normalized weights ``rows`` [R, K], the α (σ) with the least mean squared error of that
    row, searched to 0.01 σ (:func:`coarse_to_fine`), all rows at once, each error from the sorted row
    (:class:`SortedRows`), near ties decided by quantizing the row. Returns [R], float64."""
    def direct(alphas: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (quantize_weight(rows, alphas.to(rows.dtype).view(-1, 1), magnitudes) - rows).square().mean(dim=1)

    return coarse_to_fine(SortedRows(rows, magnitudes), *WEIGHT_ALPHA_RANGE, WEIGHT_ALPHA_STEP, rows=len(rows),
                          exact=direct)


def best_weight_alpha(w: torch.Tensor, magnitudes: torch.Tensor) -> float:
    """The α (σ) with the least :func:`weight_mse` of normalized weights ``w`` (any shape), to 0.01 σ."""
    return float(best_weight_alphas(w.reshape(1, -1), magnitudes)[0])


def weight_alpha(layer: QuantConv2d) -> torch.Tensor:
    """:func:`best_weight_alpha` of the layer's weights (normalized as the layer does, ``layer.weight_norm``): one
    α, or with ``layer.per_channel`` one per output channel, each fitted to that channel alone.
    Shape: ``layer.weight_alpha``'s."""
    w = normalize_weight(layer.weight.detach().double(), mode=layer.weight_norm)
    rows = w.flatten(1) if layer.per_channel else w.reshape(1, -1)
    return best_weight_alphas(rows, layer.weight_levels).to(layer.weight_alpha.dtype).view_as(layer.weight_alpha)


def weight_error(model: nn.Module) -> float:
    """Relative squared error of the quantized layers' normalized weights, pooled over the model:
    Σ ‖Q(w) − w‖² / Σ ‖w‖² (w normalized as each layer does; Q at each layer's α, per layer or per channel)."""
    error = total = 0.0
    with torch.no_grad():
        for _, layer in quantized_layers(model):
            w = normalize_weight(layer.weight.detach().double(), mode=layer.weight_norm)
            error += float((quantize_weight(w, layer.weight_alpha.detach().double(), layer.weight_levels) - w).square().sum())
            total += float(w.square().sum())
    return error / total
