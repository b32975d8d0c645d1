"""Solutions of chapter 05's exercises (do them before you read this)."""
from __future__ import annotations

import torch
from torch import nn

import apot_utils as apot


def lowest_act_alpha(model: nn.Module) -> tuple[str, float]:
    """(name, value): the name (as ``apot.quantized_layers(model)`` gives it) and the value, a float, of the smallest
    activation α among the model's quantized layers; weight α do not count, and a negative α is the smallest."""
    return min(((name, float(layer.act_alpha.detach().min())) for name, layer in apot.quantized_layers(model)),
               key=lambda pair: pair[1])


def alpha_after_step(optimizer: torch.optim.Optimizer) -> dict[str, list[torch.Tensor]]:
    """{"act_alpha": [...], "weight_alpha": [...]}: for every α of those two groups (an optimizer built on
    ``apot.parameter_groups``, its gradients computed), in the group's order, the tensor it will be after the
    optimizer's first SGD step, α − lr·(α.grad + weight_decay·α) with the group's own lr and weight decay (the momentum
    buffer starts at 0, so momentum plays no part). The parameters are left unchanged."""
    return {group["name"]: [(p - group["lr"] * (p.grad + group["weight_decay"] * p)).detach() for p in group["params"]]
            for group in optimizer.param_groups if group["name"] in ("act_alpha", "weight_alpha")}
