"""Solutions of chapter 05's exercises (do them before you read this)."""
from __future__ import annotations

from torch import nn

import apot_utils as apot


def lowest_act_alpha(model: nn.Module) -> tuple[str, float]:
    """(name, value): the name (as ``apot.quantized_layers(model)`` gives it) and the value, a float, of the smallest
    activation α among the model's quantized layers; weight α do not count, and a negative α is the smallest."""
    return min(((name, float(layer.act_alpha.detach().min())) for name, layer in apot.quantized_layers(model)),
               key=lambda pair: pair[1])
