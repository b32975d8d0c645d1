"""Solutions of chapter 02's exercises (do them before you read this)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import apot_utils as apot


def my_normalize(w: torch.Tensor) -> torch.Tensor:
    """(w − mean) / std over the whole tensor, unbiased std; any shape."""
    return (w - w.mean()) / w.std()


def my_nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """levels[argmin_j |x − levels[j]|] for every element of x; same shape as x."""
    distance = (x.unsqueeze(-1) - levels.to(x.dtype)).abs()      # [..., L]
    return levels.to(x.dtype)[distance.argmin(dim=-1)]


def my_quantize(x: torch.Tensor, alpha: torch.Tensor, levels: torch.Tensor, signed: bool) -> torch.Tensor:
    """α · Π(clip(x / α)): unsigned (activations, clip to [0, 1]) or signed (weights: the sign kept apart,
    the magnitude clipped to [0, 1] and projected onto ``levels``, the magnitude set)."""
    u = x / alpha
    if signed:
        return alpha * u.sign() * my_nearest_level(u.abs().clamp(0, 1), levels)
    return alpha * my_nearest_level(u.clamp(0, 1), levels)


class MyRCF(torch.autograd.Function):
    """α · Π(clip(x / α)) with the straight-through gradient for x and RCF's gradient for α."""

    @staticmethod
    def forward(ctx, x, alpha, levels, signed: bool):
        u = x / alpha
        if signed:
            level = u.sign() * my_nearest_level(u.abs().clamp(0, 1), levels)
        else:
            level = my_nearest_level(u.clamp(0, 1), levels)
        ctx.save_for_backward(u, level)
        ctx.signed = signed
        return alpha * level

    @staticmethod
    def backward(ctx, grad_q):
        u, level = ctx.saved_tensors
        if ctx.signed:
            grad_x = grad_q                                       # straight through everywhere
            slope = torch.where(u.abs() > 1, u.sign(), level - u)
        else:
            inside = (u >= 0) & (u <= 1)
            grad_x = grad_q * inside
            slope = torch.where(inside, level - u, (u > 1).to(u.dtype))
        return grad_x, (grad_q * slope).sum(), None, None


class MyQuantConv2d(nn.Conv2d):
    """A convolution with b-bit APoT weights (normalized, signed) and b-bit unsigned input activations."""

    def __init__(self, in_channels, out_channels, kernel_size, bit, stride=1, padding=0,
                 weight_alpha=3.0, act_alpha=8.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.register_buffer("act_levels", apot.level_set(bit))
        self.register_buffer("weight_levels", apot.weight_magnitudes(bit))
        self.weight_alpha = nn.Parameter(torch.tensor(float(weight_alpha)))
        self.act_alpha = nn.Parameter(torch.tensor(float(act_alpha)))

    def forward(self, x):
        xq = MyRCF.apply(x, self.act_alpha, self.act_levels, False)
        wq = MyRCF.apply(my_normalize(self.weight), self.weight_alpha, self.weight_levels, True)
        return F.conv2d(xq, wq, None, self.stride, self.padding)
