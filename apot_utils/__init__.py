"""apot_utils: Additive Powers-of-Two quantization (Li, Dong, Wang, ICLR 2020) for PyTorch.

The front door: ``import apot_utils as apot`` gives every name a user needs (``apot.level_set``,
``apot.convert``, ``apot.calibrate``, ``apot.to_integer``, ...), each imported from its module the first time it
is used, so that ``import apot_utils`` itself loads nothing but this file and the version (importing the level
sets does not load the training or file code).

The package in layers, each importing only those before it (``ARCHITECTURE.md``; ``tests/test_layers.py``):
:mod:`.core` (level sets, the readable reference quantizer) and :mod:`.files` (paths, checkpoints, data),
:mod:`.fast` (the fused fast path), :mod:`.fakequant` (quantizers, layers, models, post-training
quantization, training), :mod:`.integer` (integer models, the exported file, costs), :mod:`.deploy` (ONNX), then
:mod:`.commands` and :mod:`.notebook` (the chapters' helpers), and :mod:`.cli` on top.
"""
from importlib import import_module

from .core.version import __version__

_WHERE = {
    "core.levels": ["level_set", "weight_level_set", "weight_magnitudes", "available_terms", "projection_order",
                    "weight_projection_order", "integer_levels", "max_set_bits", "term_exponents", "term_widths",
                    "default_terms", "SCHEMES", "FULL_PRECISION"],
    "core.reference": ["reference_formulation", "normalize_weight", "nearest_level", "ClipProjectScale", "WEIGHT_NORMS"],
    "files.paths": ["SHIPPED_DIR"],
    "files.checkpoints": ["read_checkpoint", "release_path", "checkpoint_meta"],
    "files.data": ["load_cifar10", "load_npz", "normalize", "reference_file", "ImageArrays"],
    "files.batching": ["batches", "epoch_order"],
    "files.tblogs": ["read_scalars", "release_logs", "release_log_times", "STEPS_PER_EPOCH"],
    "fast.projection": ["project"],
    "fakequant.quantizers": ["quantize_activation", "quantize_weight"],
    "fakequant.layers": ["QuantConv2d", "QuantLinear", "FirstConv8bit", "LastLinear8bit", "alphas", "quantized_layers", "swap",
                         "frozen_weights"],
    "fakequant.convert": ["convert", "Conversion", "graph_signed_inputs", "layers_without_batchnorm", "negative_inputs"],
    "fakequant.capture": ["capturing_inputs"],
    "fakequant.ptq": ["calibrate", "Calibration", "post_training_quantize", "post_training_spec", "PTQ_WEIGHT_NORM", "PTQ_TERMS",
                      "ACT_ALPHA_STEP"],
    "fakequant.alpha_search": ["weight_error", "best_weight_alpha", "WEIGHT_ALPHA_RANGE", "WEIGHT_ALPHA_STEP"],
    "fakequant.spec": ["ModelSpec"],
    "fakequant.loading": ["load_model", "load_into", "save_quantized", "load_quantized"],
    "fakequant.evaluate": ["validate", "validate_cifar10", "pick_device", "describe_device"],
    "fakequant.training": ["Recipe", "default_recipe", "parameter_groups", "train_one_epoch", "set_quantizer_options",
                           "distillation_loss", "warmup_lr"],
    "integer.arithmetic": ["shift_add_expression", "accumulator_bound"],
    "integer.convert": ["to_integer"],
    "integer.layers": ["integer_arithmetic", "IntegerConv2d"],
    "integer.format": ["save_exported", "load_exported"],
    "integer.verify": ["compare_with_float", "layer_trace"],
    "integer.costs": ["layer_rows", "totals", "fixops", "APOT_FIXOPS_FACTOR"],
    "deploy.onnx_graph": ["to_onnx", "save_onnx"],
    "deploy.onnx_builder": ["UnsupportedModel"],
    "deploy.runtime": ["OnnxRuntimeModel"],
    "commands.validate": ["run_validation"],
    "commands.quantize": ["quantize_checkpoint"],
    "commands.export": ["export_checkpoint"],
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = ["__version__", *_MODULE_OF]


def __getattr__(name: str):
    """The front door's names, imported on first use (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'apot_utils' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
