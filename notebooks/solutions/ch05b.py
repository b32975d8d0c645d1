"""Solutions of chapter 05b's exercises (do them before you read this)."""
from __future__ import annotations

import torch
from torch import nn

import apot_utils as apot


def alpha_groups(model: nn.Module, lr: float, act_alpha_lr: float, weight_alpha_lr: float) -> list[dict]:
    """SGD parameter groups: every ``act_alpha`` at act_alpha_lr, every ``weight_alpha`` at weight_alpha_lr, all
    other parameters at lr; no parameter in two groups, none left out."""
    act = [p for n, p in model.named_parameters() if n.endswith(".act_alpha")]
    weight = [p for n, p in model.named_parameters() if n.endswith(".weight_alpha")]
    taken = {id(p) for p in act + weight}
    other = [p for p in model.parameters() if id(p) not in taken]
    return [{"params": other, "lr": lr}, {"params": act, "lr": act_alpha_lr}, {"params": weight, "lr": weight_alpha_lr}]


def training_step(model: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  min_alpha: float = 1e-3) -> float:
    """One step of distillation: BatchNorm in training mode (batch statistics; running statistics updated), the
    loss ``apot.distillation_loss`` against the teacher's logits (no gradient to the teacher), one optimizer step,
    then every α clamped to at least ``min_alpha``. Returns the loss."""
    model.train()
    with torch.no_grad():
        target = teacher(images)
    loss = apot.distillation_loss(model(images), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for _, layer in apot.quantized_layers(model):
            layer.act_alpha.clamp_(min=min_alpha)
            layer.weight_alpha.clamp_(min=min_alpha)
    return loss.item()
