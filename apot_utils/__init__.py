"""apot_utils: Additive Powers-of-Two quantization (Li, Dong, Wang, ICLR 2020) for PyTorch.

The package in layers, each importing only those before it (``ARCHITECTURE.md``; ``tests/test_layers.py``):
:mod:`.core` (level sets, the readable reference quantizer) and :mod:`.files` (paths, checkpoints, data),
:mod:`.fast` (the fused fast path), :mod:`.fakequant` (quantizers, layers, models, post-training
quantization, training), :mod:`.integer` (integer models, the exported file, costs), then :mod:`.commands`
and :mod:`.notebook` (the chapters' helpers), and :mod:`.cli` on top.
"""
from .core.version import __version__
from .core.levels import level_set, weight_level_set, weight_magnitudes
from .core.reference import reference_formulation
from .fakequant.layers import FirstConv8bit, LastLinear8bit, QuantConv2d, alphas, quantized_layers
from .fakequant.loading import load_model
from .fakequant.quantizers import quantize_activation, quantize_weight
from .fakequant.spec import ModelSpec
from .fast.projection import project

__all__ = ["__version__", "FirstConv8bit", "LastLinear8bit", "ModelSpec", "QuantConv2d", "alphas", "level_set", "load_model",
           "project", "quantize_activation", "quantize_weight", "quantized_layers", "reference_formulation",
           "weight_level_set", "weight_magnitudes"]
