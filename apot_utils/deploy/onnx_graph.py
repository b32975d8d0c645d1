"""An integer model as an ONNX graph of standard operators that ONNX Runtime runs, in three variants.

The input is an integer model (:func:`apot_utils.integer.convert.to_integer`) of any CNN the integer path runs
(this package's ResNets, or your own network after ``convert``): its weights are integer codes
(:class:`~apot_utils.integer.layers.IntegerConv2d`), stored as int8 initializers with their scales.

- ``exact``: the arithmetic of :func:`apot_utils.integer.layers.integer_arithmetic`, operator for operator
  (:mod:`apot_utils.deploy.onnx_layers`), so the logits are the integer path's bits, and so its predictions, on
  every machine (a pool written as a function in the model's forward is torch's own, not fixed-order, and so
  equal up to float32 rounding).
- ``fast``: ONNX Runtime's integer kernels where it has fast ones (:mod:`apot_utils.deploy.onnx_fast`): this
  package's ResNets only.
- ``float``: the same network with the same (quantized) weights and no activation quantization, in float32
  Conv, BatchNormalization, Relu, GlobalAveragePool and Gemm: the speed baseline of ``benchmarks/bench_onnx.py``.

The exact and float variants follow the model's own forward (``torch.fx``), so they take any layout of the layers
:class:`~apot_utils.deploy.onnx_layers.GraphWalker` lists. :func:`to_onnx` builds the model, :func:`save_onnx`
writes it (refusing an existing file, atomically). Shapes: input ``images`` [N, 3, H, W] float32 (normalized as
for the PyTorch model), output ``logits`` [N, classes] float32; N is free, and so are H and W unless the model
records its image size (a :class:`~apot_utils.fakequant.spec.ModelSpec`) or ``image_size`` is given.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..integer.layers import Fixed8bit, IntegerConv2d, integer_arithmetic
from .onnx_builder import GraphBuilder, UnsupportedModel
from .onnx_fast import FastResNet
from .onnx_layers import GraphWalker
from .onnx_tables import grid_steps

VARIANTS = ("exact", "fast", "float")
OPSET = 21
FORMAT = "apot-onnx-v1"


def check_exportable(model: nn.Module, variant: str) -> None:
    """Raise :class:`UnsupportedModel`, saying why, for a model ``variant`` cannot express."""
    if variant not in VARIANTS:
        raise UnsupportedModel(f"variant must be one of {VARIANTS}, got {variant!r}")
    convs = [m for m in model.modules() if isinstance(m, IntegerConv2d)]
    if not convs:
        raise UnsupportedModel("the model has no integer layers: export an integer model (to_integer) of a 2..8-bit model")
    if variant == "fast" and not (hasattr(model, "layer1") and isinstance(getattr(model, "conv1", None), Fixed8bit)
                                  and isinstance(getattr(model, "fc", None), Fixed8bit)):
        raise UnsupportedModel(f"{type(model).__name__}: the fast variant writes this package's ResNets only "
                               "(the exact and float variants take any network)")
    for conv in convs:
        if int(conv.weight_int.abs().max()) > 127:
            raise UnsupportedModel(f"{conv.bits}-bit {conv.scheme} weights: integers up to {int(conv.weight_int.abs().max())} "
                                   "do not fit int8 codes")
        if variant == "fast":
            grid_steps(conv.bits, conv.scheme, conv.terms)
        if conv.act_levels.dtype != torch.float32:
            raise UnsupportedModel("export the integer model with level_values='release' (float32 levels)")


def _classes(model: nn.Module, image_size: int) -> int:
    """The width of the model's logits for one image of image_size²: the model is run once, in integer arithmetic
    (which also refuses a pool that is not global at that size)."""
    try:
        with torch.inference_mode(), integer_arithmetic(model):
            logits = model.eval()(torch.zeros(1, 3, image_size, image_size))
    except (RuntimeError, ValueError) as error:
        raise UnsupportedModel(f"the model does not run on a {image_size}×{image_size} image ({error}): pass the "
                               "image_size it takes") from None
    if logits.dim() != 2:
        raise UnsupportedModel(f"the model gives logits of shape {tuple(logits.shape)}; the exporter writes [N, classes]")
    return logits.shape[1]


def to_onnx(model: nn.Module, variant: str = "exact", meta: dict | None = None, image_size: int | None = None):
    """The ONNX model (``onnx.ModelProto``, checked by ``onnx.checker``) of an integer model
    (:func:`~apot_utils.integer.convert.to_integer`, ``level_values='release'``) in ``variant`` (module docstring).
    meta: stored in the file's metadata, JSON-encoded (default: what rebuilds the model, its ModelSpec or what
    ``convert`` chose). image_size: H = W of the file's input (default: the model's ModelSpec's; else any size,
    the model checked on 32 × 32). Raises :class:`UnsupportedModel` with the reason for a model the variant cannot
    express."""
    import onnx
    import onnx.helper as helper

    from ..fakequant.loading import description

    check_exportable(model, variant)
    spec = getattr(model, "spec", None)
    size = image_size or (spec.image_size if spec is not None else None)
    classes = _classes(model, size or 32)
    g = GraphBuilder()
    out = FastResNet(g, model).build() if variant == "fast" else GraphWalker(g, variant == "exact", model).build()
    g.output(out, "logits")
    height, width = (size, size) if size else ("H", "W")
    graph = helper.make_graph(
        g.nodes, f"apot_{variant}",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", classes])], g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="apot_utils")
    proto.ir_version = 10
    if meta is None:
        try:
            meta = description(model)
        except ValueError:              # neither a spec nor a conversion record: the file then records nothing
            meta = {}
    fields = {"format": FORMAT, "variant": variant, **{k: json.dumps(v) for k, v in meta.items()}}
    helper.set_model_props(proto, fields)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_onnx(proto, out: str | Path) -> Path:
    """Write ``proto`` to ``out`` (a new .onnx file; refused if it exists), atomically."""
    from ..files import atomic
    from ..files.paths import new_file

    out = new_file(out, ".onnx")
    data = proto.SerializeToString()
    return atomic.write_atomically(out, lambda f: f.write(data))
