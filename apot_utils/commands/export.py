"""``python -m apot_utils export``: a quantized checkpoint as packed integer codes (.safetensors) or as an
ONNX model that ONNX Runtime runs (.onnx, :mod:`apot_utils.deploy.onnx_graph`)."""
from __future__ import annotations

from pathlib import Path

from ..fakequant.loading import checkpoint_path, load_model
from ..files import data, downloads
from ..files.paths import new_file
from ..integer.convert import to_integer
from ..fakequant.evaluate import check_model_computes
from ..integer.format import load_exported, save_exported

FORMATS = ("safetensors", "onnx")


def export_checkpoint(dataset: str, arch: str, bit: int | None, checkpoint, out, fmt: str = "safetensors",
                      variant: str = "exact", log=print) -> Path:
    """Load ``checkpoint`` ('release' or a path), convert it to integers in memory
    (:func:`~apot_utils.integer.convert.to_integer`) and write it to ``out`` (refused if it exists, written
    atomically) as ``fmt``: 'safetensors' (:func:`~apot_utils.integer.format.save_exported`) or 'onnx' in
    ``variant`` 'exact', 'fast' or 'float' (:func:`~apot_utils.deploy.onnx_graph.to_onnx`). Prints the sizes.
    A model that computes NaN or infinity is refused before anything is written, and the written file is
    loaded back with ``validate``'s loader and run once: a file that it refuses, or that computes NaN, is
    removed and the error raised."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    out = new_file(out, f".{fmt}")
    model = load_model(dataset, arch, bit, checkpoint, log=lambda line: None)
    source = checkpoint_path(checkpoint, dataset, arch, model.spec.bit)
    meta = model.spec.meta() | {"source": data.display_path(source), "source_sha256": downloads.sha256_of(source)}
    check_model_computes(model, model.spec.image_size, str(source))
    integer = to_integer(model)
    if fmt == "safetensors":
        save_exported(integer, out, meta)
    else:
        from ..deploy.onnx_graph import save_onnx, to_onnx
        save_onnx(to_onnx(integer, variant, meta), out)
    try:            # the file as validate will read it: its loader's checks, then finite logits
        if fmt == "safetensors":
            written = load_exported(out)
        else:
            from ..deploy.runtime import OnnxRuntimeModel
            written = OnnxRuntimeModel(out)
        check_model_computes(written, model.spec.image_size, f"the exported file {out}")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    log(f"=> wrote {out}: {out.stat().st_size:,} bytes (the checkpoint: {source.stat().st_size:,} bytes)")
    return out
