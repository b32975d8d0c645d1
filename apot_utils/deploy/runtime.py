"""Running an exported ONNX model (:mod:`apot_utils.deploy.onnx_graph`) in ONNX Runtime on the CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..fakequant.spec import IMAGE_SIZE
from ..files.metadata import json_field
from .onnx_graph import FORMAT


def read_metadata(path: str | Path) -> dict:
    """The metadata an exported .onnx file records (format, variant, dataset, arch, bit, ...), JSON values decoded."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:        # onnx raises DecodeError and others for a file that is not ONNX
        raise ValueError(f"{path} is not an ONNX model: {error}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by apot_utils' ONNX exporter (format {props.get('format')!r})")
    meta = {k: (v if k in ("format", "variant") else json_field(path, k, v)) for k, v in props.items()}
    if "variant" not in meta:
        raise ValueError(f"{path}: its metadata lacks variant (every file the exporter writes has it)")
    inputs, outputs = proto.graph.input, proto.graph.output
    if [i.name for i in inputs] != ["images"] or [o.name for o in outputs] != ["logits"]:
        raise ValueError(f"{path}: its graph takes {[i.name for i in inputs]} and gives {[o.name for o in outputs]}; "
                         "the exporter's take 'images' and give 'logits'")
    if "dataset" not in meta:         # a graph exported without a model description (to_onnx(model) alone)
        return meta
    side = IMAGE_SIZE.get(meta["dataset"])
    classes = {"cifar10": 10, "imagenet": 1000}.get(meta["dataset"])
    shape = [d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    width = [d.dim_value or d.dim_param for d in outputs[0].type.tensor_type.shape.dim]
    if shape[1:] != [3, side, side] or width[1:] != [classes]:
        raise ValueError(f"{path}: its graph maps {shape} to {width}; a {meta['dataset']} model maps "
                         f"[N, 3, {side}, {side}] to [N, {classes}]")
    return meta


class OnnxRuntimeModel(nn.Module):
    """An .onnx file behind a module's interface: forward(images [N, 3, H, W] float32 tensor) -> logits
    [N, classes], computed by an ONNX Runtime CPU session (``threads``: intra-op threads, default torch's).
    ``meta``: the file's metadata (:func:`read_metadata`). ``optimization``: ONNX Runtime's graph
    optimization level, 'all' (its default) or 'none'."""

    def __init__(self, path: str | Path, threads: int | None = None, optimization: str = "all"):
        super().__init__()
        import onnxruntime as ort

        self.path, self.meta = Path(path), read_metadata(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        options.graph_optimization_level = levels[optimization]
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(["logits"], {"images": x})[0])
