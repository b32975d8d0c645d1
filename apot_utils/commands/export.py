"""``python -m apot_utils export``: a quantized checkpoint as packed integer codes (.safetensors) or as an
ONNX model that ONNX Runtime runs (.onnx, :mod:`apot_utils.deploy.onnx_graph`)."""
from __future__ import annotations

from pathlib import Path

from ..fakequant.loading import checkpoint_path, load_model
from ..files import checkpoints, data
from ..files.paths import new_file
from ..integer.convert import to_integer
from ..integer.format import save_exported

FORMATS = ("safetensors", "onnx")


def export_checkpoint(dataset: str, arch: str, bit: int | None, checkpoint, out, fmt: str = "safetensors",
                      variant: str = "exact", log=print) -> Path:
    """Load ``checkpoint`` ('release' or a path), convert it to integers in memory
    (:func:`~apot_utils.integer.convert.to_integer`) and write it to ``out`` (refused if it exists, written
    atomically) as ``fmt``: 'safetensors' (:func:`~apot_utils.integer.format.save_exported`) or 'onnx' in
    ``variant`` 'exact', 'fast' or 'float' (:func:`~apot_utils.deploy.onnx_graph.to_onnx`). Prints the sizes."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    out = new_file(out, f".{fmt}")
    model = load_model(dataset, arch, bit, checkpoint, log=lambda line: None)
    source = checkpoint_path(checkpoint, dataset, arch, model.spec.bit)
    meta = model.spec.meta() | {"source": data.display_path(source), "source_sha256": checkpoints.sha256_of(source)}
    integer = to_integer(model)
    if fmt == "safetensors":
        save_exported(integer, out, meta)
    else:
        from ..deploy.onnx_graph import save_onnx, to_onnx
        save_onnx(to_onnx(integer, variant, meta), out)
    log(f"=> wrote {out}: {out.stat().st_size:,} bytes (the checkpoint: {source.stat().st_size:,} bytes)")
    return out
