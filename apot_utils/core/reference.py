"""The APoT quantizer as the paper defines it, written to be read: the definition the fast path
(:mod:`apot_utils.fast`) is tested against, bit for bit, values and gradients.

Forward (Q(x; α, levels), section 3 of the paper): u = x / α, clip u to [0, 1] (activations) or
[-1, 1] (weights, whose sign is kept apart), replace it by its nearest level, multiply back by α.
Backward, the paper's reparameterized clipping function (RCF):
- x: straight through where 0 <= u <= 1 (activations); everywhere for weights, unless
  ``clip_grad`` (then only where |u| <= 1, as the ImageNet release above 2 bits);
- α: Σ g · (q(u) − u) where u is inside the clipping range, Σ g · sign(u) where it is clipped
  (0 below 0 for activations), times ``grad_scale``; summed to α's shape (0-d, or [C_out, 1, 1, 1]).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``levels[argmin_j |x − levels[j]|]`` for every element of x (any shape): the first listed of two
    equally near levels wins, so the order of ``levels`` is the tie order. Memory O(N·L)."""
    levels = levels.to(dtype=x.dtype, device=x.device)
    return levels[(x.reshape(-1, 1) - levels).abs().argmin(dim=1)].view_as(x)


WEIGHT_NORMS = ("mean_std", "std", "channel_std")


def normalize_weight(w: torch.Tensor, stats_grad: bool = True, mode: str = "mean_std") -> torch.Tensor:
    """A layer's weight w [C_out, ...] in units of its spread, before it is clipped and projected (unbiased std):

    - 'mean_std': ``(w − mean) / std`` over the whole tensor, the releases' (the paper's weight normalization);
    - 'std': ``w / std`` over the whole tensor: nothing subtracted, so that a quantized layer computes a multiple
      of its full-precision product (which BatchNorm absorbs) instead of that product minus mean · Σ inputs;
    - 'channel_std': ``w / std`` of each output channel (row ``w[c]``; a channel of zeros is left zeros).

    stats_grad False treats mean and std as constants (the CIFAR-10 release's ``weight.data.mean()``); the values
    are the same either way."""
    v = w if stats_grad else w.detach()
    if mode == "mean_std":
        return (w - v.mean()) / v.std()
    if mode == "std":
        return w / v.std()
    if mode == "channel_std":       # a channel of zeros (pruned, dead) stays zeros
        std = v.flatten(1).std(1).view(-1, *(1,) * (w.dim() - 1))
        return w / torch.where(std > 0, std, torch.ones_like(std))
    raise ValueError(f"weight normalization must be one of {WEIGHT_NORMS}, got {mode!r}")


class ClipProjectScale(torch.autograd.Function):
    """α · nearest_level(clip(x / α)) with the RCF gradients (module docstring). levels: the unsigned
    set (activations) or the magnitudes (weights, ``signed=True``), in tie order."""

    @staticmethod
    def forward(ctx, x, alpha, levels, signed: bool, grad_scale: float = 1.0, clip_grad: bool = False):
        u = x / alpha
        if signed:
            clipped = u.clamp(-1, 1)
            q = nearest_level(clipped.abs(), levels) * clipped.sign()
        else:
            q = nearest_level(u.clamp(0, 1), levels)
        ctx.save_for_backward(u, q)
        ctx.signed, ctx.grad_scale, ctx.clip_grad, ctx.alpha_shape = signed, grad_scale, clip_grad, alpha.shape
        return q * alpha

    @staticmethod
    def backward(ctx, grad_out):
        u, q = ctx.saved_tensors
        if ctx.signed:
            grad_x = grad_out * (u.abs() <= 1) if ctx.clip_grad else grad_out
            slope = torch.where(u.abs() > 1, u.sign(), q - u)
        else:
            inside = (u >= 0) & (u <= 1)
            grad_x = grad_out * inside
            slope = torch.where(inside, q - u, (u > 1).to(u.dtype))
        per_element = grad_out * slope
        grad_alpha = per_element.sum() if ctx.alpha_shape == () else per_element.sum_to_size(ctx.alpha_shape)
        return grad_x, grad_alpha.mul(ctx.grad_scale), None, None, None, None


_active = [False]


@contextmanager
def reference_formulation():
    """Inside the block every quantizer of the package computes with this module (:class:`ClipProjectScale`,
    :func:`nearest_level`) instead of the fast path, and validation quantizes the weights in every forward:
    the same values and gradients bit for bit (tests), other memory and time (``benchmarks/``). It switches
    the whole process (not thread-safe)."""
    saved, _active[0] = _active[0], True
    try:
        yield
    finally:
        _active[0] = saved


def reference_active() -> bool:
    """Whether :func:`reference_formulation` is in force."""
    return _active[0]
