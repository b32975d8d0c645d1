"""``python -m apot_utils export``: a quantized checkpoint as packed integer codes (.safetensors)."""
from __future__ import annotations

from pathlib import Path

from ..fakequant.loading import checkpoint_path, load_model
from ..files import checkpoints, data
from ..files.paths import new_file
from ..integer.convert import to_integer
from ..integer.format import save_exported


def export_checkpoint(dataset: str, arch: str, bit: int | None, checkpoint, out, log=print) -> Path:
    """Load ``checkpoint`` ('release' or a path), convert it to integers in memory
    (:func:`~apot_utils.integer.convert.to_integer`) and write that to ``out``
    (:func:`~apot_utils.integer.format.save_exported`); prints the sizes of both files."""
    out = new_file(out, ".safetensors")
    model = load_model(dataset, arch, bit, checkpoint, log=lambda line: None)
    source = checkpoint_path(checkpoint, dataset, arch, model.spec.bit)
    meta = model.spec.meta() | {"source": data.display_path(source), "source_sha256": checkpoints.sha256_of(source)}
    save_exported(to_integer(model), out, meta)
    log(f"=> wrote {out}: {out.stat().st_size:,} bytes (the checkpoint: {source.stat().st_size:,} bytes)")
    return out
