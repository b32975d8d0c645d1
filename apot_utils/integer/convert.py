"""From a fake-quantized model to an integer model, in memory: every quantized convolution becomes an
:class:`~apot_utils.integer.layers.IntegerConv2d` holding its b-bit codes, the 8-bit first and last layers
:class:`~apot_utils.integer.layers.Fixed8bit`, BatchNorm and the global pool their fixed-order counterparts.
The file format (:mod:`apot_utils.integer.format`) writes and reads what this builds."""
from __future__ import annotations

import copy

from torch import nn

from ..core.eight_bit import eight_bit_codes
from ..fakequant.layers import FirstConv8bit, LastLinear8bit, QuantConv2d, QuantLinear, quantized_layers, swap
from .arithmetic import weight_codes
from .layers import LEVEL_VALUES, Fixed8bit, FixedOrderBatchNorm2d, FixedOrderGlobalPool, IntegerConv2d


def integer_layer(module: nn.Module, level_values: str = "release") -> nn.Module | None:
    """The integer counterpart of one layer of a fake-quantized model, or None for a layer that stays as it
    is (ReLU, a residual block's container, a full-precision convolution). level_values: 'release' or 'exact'."""
    if isinstance(module, QuantLinear) and module.quantized:
        raise ValueError("the integer path runs quantized convolutions, not linear layers")
    quantized = isinstance(module, FirstConv8bit) or isinstance(module, QuantConv2d) and module.quantized
    if quantized and module.padding_mode != "zeros":
        raise ValueError(f"padding_mode={module.padding_mode!r}: the integer path pads with zeros")
    if isinstance(module, QuantConv2d) and module.quantized:
        codes = weight_codes(module.weight, module.weight_alpha, module.bit, module.weight_levels,
                             module.weight_stats_grad, module.weight_norm)
        return IntegerConv2d(codes, module.weight_alpha, module.act_alpha, module.stride, module.padding,
                             module.bit, module.scheme, module.terms, level_values, dilation=module.dilation,
                             groups=module.groups, bias=module.bias, signed=module.signed)
    if isinstance(module, FirstConv8bit):
        if module.groups != 1:
            raise ValueError(f"groups={module.groups}: the integer path runs 8-bit convolutions without groups")
        return Fixed8bit(eight_bit_codes(module.weight).long(), module.weight.detach().max(), module.bias,
                         conv=(module.stride, module.padding, module.dilation))
    if isinstance(module, LastLinear8bit):
        return Fixed8bit(eight_bit_codes(module.weight).long(), module.weight.detach().max(), module.bias)
    if isinstance(module, nn.BatchNorm2d):
        norm = FixedOrderBatchNorm2d(module.num_features, module.eps)
        norm.load_state_dict(module.state_dict())
        return norm
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return FixedOrderGlobalPool(module)
    return None


def to_integer(model: nn.Module, level_values: str = "release") -> nn.Module:
    """A copy of the quantized ``model`` (2..8 bits) with every layer replaced by :func:`integer_layer`, in
    eval mode: float arithmetic by default (the fake-quantized model's values, bit for bit, with
    ``level_values='release'``), integers inside :func:`~apot_utils.integer.layers.integer_arithmetic`."""
    if level_values not in LEVEL_VALUES:
        raise ValueError(f"level_values must be one of {LEVEL_VALUES}, got {level_values!r}")
    if not quantized_layers(model):
        raise ValueError("the model has no quantized layers: the integer path needs a 2..8-bit model")
    model = copy.deepcopy(model).eval()
    replacements = {}
    for name, module in model.named_modules():
        try:
            replacement = integer_layer(module, level_values)
        except ValueError as error:
            raise ValueError(f"layer {name} ({type(module).__name__}): {error}") from None
        if replacement is not None:
            replacements[name] = replacement
    return swap(model, replacements).eval()      # the new layers too (a BatchNorm in training mode would use batch statistics)
