"""apot_utils: Additive Powers-of-Two quantization (Li, Dong, Wang, ICLR 2020) for PyTorch."""
from .layers import FirstConv8bit, LastLinear8bit, QuantConv2d, alphas, quantized_layers
from .levels import level_set, weight_level_set, weight_magnitudes
from .models import build_model
from .quantize import ActivationQuantizer, WeightQuantizer, project, quantize_activation, quantize_weight

__all__ = ["ActivationQuantizer", "FirstConv8bit", "LastLinear8bit", "QuantConv2d", "WeightQuantizer",
           "alphas", "build_model", "level_set", "project", "quantize_activation", "quantize_weight",
           "quantized_layers", "weight_level_set", "weight_magnitudes"]
