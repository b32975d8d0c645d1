"""Solutions of chapter 09's exercises (do them before you read this)."""
from __future__ import annotations

import torch
from torch import nn


def signed_layers_from_data(model: nn.Module, example: torch.Tensor) -> set[str]:
    """Names of the nn.Conv2d and nn.Linear layers of ``model`` that receive a negative value in one forward pass of
    ``example``: a forward pre-hook on each, one pass in eval mode without gradients, then every hook removed and
    the model put back in the mode it was in."""
    found, hooks = set(), []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def hook(_module, inputs, name=name):        # name=name: each hook keeps its own layer's name
                if bool((inputs[0] < 0).any()):
                    found.add(name)
            hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    return found
