"""Export a quantized model as integers, in the safetensors format (no pickle), and load it back.

What the file holds, per quantized convolution ``<name>``: ``<name>.weight_codes`` (the b-bit codes
of :func:`apot_utils.integer.weight_codes`, packed b bits each), ``<name>.weight_shape``,
``<name>.weight_alpha`` and ``<name>.act_alpha`` (float32), and ``<name>.scale``, the folded
factor s = α_a·α_w / (I_a,max·I_w,max) (float64) that turns the integer convolution into the
layer's output. The 8-bit first convolution and last linear layer: ``weight_codes`` as int8 (or
int16 where a code leaves int8) and ``weight_max``. The level sets once: ``levels.act`` (float32,
in projection order) with ``levels.act_integers``, ``levels.weight_magnitudes`` (sorted) with
``levels.weight_integers``. BatchNorm parameters and statistics and the fc bias: float32.
Metadata (strings): format, dataset, arch, bit, scheme, terms, per_channel, level_rule, source and
its sha256, and ``tensors_sha256`` (:func:`tensors_digest`), checked on loading.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from . import checkpoints
from .integer import (Fixed8bit, FixedOrderBatchNorm2d, FixedOrderGlobalPool, IntegerConv2d, folded_scale, in_order,
                      pack_codes, unpack_codes, weight_codes)
from .layers import FirstConv8bit, LastLinear8bit, QuantConv2d
from .levels import integer_levels, projection_order, weight_projection_order
from .models import build_model
from .quantize import eight_bit_codes

FORMAT = "apot-integer-v1"


def export_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of the exported file for a quantized model (module docstring)."""
    tensors, some = {}, None
    for name, module in model.named_modules():
        if isinstance(module, QuantConv2d) and module.quantized:
            some = module
            codes = weight_codes(module.weight, module.weight_alpha, module.bit, module.weight_levels,
                                 module.weight_stats_grad)
            tensors |= {f"{name}.weight_codes": pack_codes(codes, module.bit),
                        f"{name}.weight_shape": torch.tensor(codes.shape, dtype=torch.int64),
                        f"{name}.weight_alpha": module.weight_alpha.detach().float().clone(),
                        f"{name}.act_alpha": module.act_alpha.detach().float().clone(),
                        f"{name}.scale": folded_scale(module.act_alpha, module.weight_alpha, module.bit,
                                                      module.scheme, module.terms)}
        elif isinstance(module, (FirstConv8bit, LastLinear8bit)):
            codes = eight_bit_codes(module.weight).long()
            small = codes.abs().max() <= 127
            tensors |= {f"{name}.weight_codes": codes.to(torch.int8 if small else torch.int16),
                        f"{name}.weight_max": module.weight.detach().max().clone()}
            if module.bias is not None:
                tensors[f"{name}.bias"] = module.bias.detach().clone()
        elif isinstance(module, nn.BatchNorm2d):
            for key in ("weight", "bias", "running_mean", "running_var"):
                tensors[f"{name}.{key}"] = getattr(module, key).detach().clone()
    if some is None:
        raise ValueError("the model has no quantized layers: export needs a 2..8-bit model")
    tensors |= {"levels.act": projection_order(some.bit, some.scheme, some.terms),
                "levels.act_integers": in_order(integer_levels(some.bit, some.scheme, some.terms),
                                                projection_order(some.bit, some.scheme, some.terms)),
                "levels.weight_magnitudes": weight_projection_order(some.bit, some.scheme, some.terms).sort().values,
                "levels.weight_integers": integer_levels(some.bit - 1, some.scheme, some.terms)}
    return {k: v.contiguous() for k, v in tensors.items()}


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: written into the file's metadata
    and checked on loading, so an edited or damaged tensor is refused rather than validated."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export(model: nn.Module, out: str | Path, meta: dict) -> Path:
    """Write ``model`` (quantized, any bitwidth 2..8) to ``out`` (refused if it exists) with ``meta``
    (dataset, arch, bit, scheme, terms, per_channel, source, source_sha256), atomically."""
    from safetensors.torch import save

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose another --out (nothing was overwritten)")
    if out.suffix != ".safetensors":
        raise ValueError(f"the exported file's name must end in .safetensors, got {out.name}")
    tensors = export_tensors(model)
    data = save(tensors, metadata={"format": FORMAT, "level_rule": checkpoints.LEVEL_RULE,
                                   "tensors_sha256": tensors_digest(tensors), **{k: json.dumps(v) for k, v in meta.items()}})
    return checkpoints.write_atomically(out, lambda f: f.write(data))


def read_exported(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of an exported file; a clear error for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise checkpoints.CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    if raw.get("format") != FORMAT:
        raise checkpoints.CheckpointError(f"{path} is not an exported APoT model (format {raw.get('format')!r}, "
                                          f"expected {FORMAT!r})")
    if raw.get("level_rule") != checkpoints.LEVEL_RULE:
        raise checkpoints.CheckpointError(f"{path} was made with level-set rule {raw.get('level_rule')!r}, this "
                                          f"version builds {checkpoints.LEVEL_RULE!r}")
    recorded = raw.get("tensors_sha256")
    if recorded is not None and recorded != tensors_digest(tensors):
        raise checkpoints.CheckpointError(f"{path}: its tensors are not the ones it was exported with (their sha256 "
                                          "differs from the one in its metadata): an edited or damaged file")
    meta = {}
    for key, value in raw.items():
        if key not in ("format", "level_rule", "tensors_sha256"):
            try:
                meta[key] = json.loads(value)
            except json.JSONDecodeError:
                raise checkpoints.CheckpointError(f"{path}: its metadata {key!r} is not JSON ({value[:40]!r})") from None
    missing = [k for k in ("dataset", "arch", "bit", "scheme") if k not in meta]
    if missing:
        raise checkpoints.CheckpointError(f"{path}: its metadata lacks {', '.join(missing)}")
    return tensors, meta


def _tensor(tensors: dict[str, torch.Tensor], key: str, shape: tuple | None, path, dtypes=None,
            positive: bool = False) -> torch.Tensor:
    """``tensors[key]``, checked: present, of ``shape`` (None: any), of one of ``dtypes`` (None: floating),
    finite, and with ``positive`` greater than 0; a CheckpointError naming the file and the tensor."""
    if key not in tensors:
        raise checkpoints.CheckpointError(f"{path} lacks tensor {key!r}: another architecture, or a damaged file?")
    t = tensors[key]
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise checkpoints.CheckpointError(f"{path}: {key} has shape {tuple(t.shape)}, the model needs {tuple(shape)}")
    if dtypes is None and not t.is_floating_point() or dtypes is not None and t.dtype not in dtypes:
        raise checkpoints.CheckpointError(f"{path}: {key} is {t.dtype}, expected {dtypes or 'a floating-point tensor'}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise checkpoints.CheckpointError(f"{path}: {key} holds values that are not finite")
    if positive and not bool((t > 0).all()):
        raise checkpoints.CheckpointError(f"{path}: {key} is {t.flatten()[:4].tolist()}; it must be positive")
    return t


def load_exported(path: str | Path, levels: str = "release", dataset: str | None = None, arch: str | None = None,
                  bit: int | None = None) -> nn.Module:
    """The model of an exported file, in eval mode: the architecture of its metadata, with every
    quantized convolution an :class:`~apot_utils.integer.IntegerConv2d` and the 8-bit layers
    :class:`~apot_utils.integer.Fixed8bit`, BatchNorm and the average pool their fixed-order counterparts
    (float arithmetic by default, the float model's bit for bit; inside
    :func:`~apot_utils.integer.integer_arithmetic` integers and fixed-order rounding, the same on every machine). dataset / arch / bit, when given, must match the file.
    Every tensor is checked as a checkpoint is (shape, dtype, finite; α, ``weight_max`` and the running
    variances positive; the 8-bit codes' largest 127) before the model is built from it."""
    tensors, meta = read_exported(path)
    for name, wanted in (("dataset", dataset), ("arch", arch), ("bit", bit)):
        if wanted is not None and meta.get(name) != wanted:
            asked = " ".join(part for part in (bit and f"{bit}-bit", arch, dataset) if part)
            raise checkpoints.CheckpointError(f"{path} is a {meta.get('bit')}-bit {meta.get('arch')} {meta.get('dataset')} "
                                              f"model, not {asked}")
    try:
        model = build_model(meta["dataset"], meta["arch"], meta["bit"], meta["scheme"], meta.get("terms"),
                            bool(meta.get("per_channel")))
    except ValueError as error:
        raise checkpoints.CheckpointError(f"{path}: its metadata describes no model this version builds ({error})") from None
    if not torch.equal(tensors.get("levels.act", torch.empty(0)), projection_order(meta["bit"], meta["scheme"], meta.get("terms"))):
        raise checkpoints.CheckpointError(f"{path}: its level sets are not those of a {meta['bit']}-bit {meta['scheme']} "
                                          f"model with terms={meta.get('terms')}: its metadata and its tensors disagree")
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantConv2d) and module.quantized:
            shape = tuple(module.weight.shape)
            _tensor(tensors, f"{name}.weight_shape", (4,), path, (torch.int64,))
            if tuple(tensors[f"{name}.weight_shape"].tolist()) != shape:
                raise checkpoints.CheckpointError(f"{path}: {name}.weight_shape is {tensors[f'{name}.weight_shape'].tolist()}, "
                                                  f"the model's layer is {list(shape)}")
            packed = _tensor(tensors, f"{name}.weight_codes", None, path, (torch.uint8,))
            try:
                codes = unpack_codes(packed, module.bit, module.weight.numel()).view(shape)
            except ValueError as error:
                raise checkpoints.CheckpointError(f"{path}: {name}.weight_codes: {error}") from None
            replacement = IntegerConv2d(
                codes, _tensor(tensors, f"{name}.weight_alpha", module.weight_alpha.shape, path, positive=True),
                _tensor(tensors, f"{name}.act_alpha", (), path, positive=True),
                module.stride, module.padding, module.bit, module.scheme, module.terms, levels)
        elif isinstance(module, (FirstConv8bit, LastLinear8bit)):
            codes = _tensor(tensors, f"{name}.weight_codes", module.weight.shape, path, (torch.int8, torch.int16))
            if int(codes.max()) != 127:       # round(w / max(w) · 127): the largest weight's code is 127
                raise checkpoints.CheckpointError(f"{path}: {name}.weight_codes reach {int(codes.max())}; the largest "
                                                  "8-bit code is 127")
            weight_max = _tensor(tensors, f"{name}.weight_max", (), path, positive=True)
            if isinstance(module, FirstConv8bit):
                replacement = Fixed8bit(codes.long(), weight_max, conv=(module.stride, module.padding))
            else:
                bias = None if module.bias is None else _tensor(tensors, f"{name}.bias", module.bias.shape, path)
                replacement = Fixed8bit(codes.long(), weight_max, bias)
        elif isinstance(module, nn.BatchNorm2d):
            replacement = FixedOrderBatchNorm2d(module.num_features, module.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(replacement, key).data.copy_(_tensor(tensors, f"{name}.{key}", (module.num_features,), path,
                                                             positive=key == "running_var"))
        elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            replacement = FixedOrderGlobalPool(module)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
    return model.eval()


def export_checkpoint(dataset: str, arch: str, bit: int | None, checkpoint, out, log=print) -> Path:
    """What ``python -m apot_utils export`` does: load ``checkpoint`` ('release' or a path) and write it
    to ``out`` as packed integers; prints the sizes of both files."""
    from . import data
    from .pipeline import load_model

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose another --out (nothing was overwritten)")
    if out.suffix != ".safetensors":
        raise ValueError(f"the exported file's name must end in .safetensors, got {out.name}")
    model = load_model(dataset, arch, bit, checkpoint, log=lambda line: None)
    source = checkpoints.release_path(dataset, arch, model.bit) if str(checkpoint) == "release" else Path(checkpoint)
    meta = {"dataset": dataset, "arch": arch, "bit": model.bit, "scheme": model.scheme, "terms": model.terms,
            "per_channel": model.per_channel, "source": data.display_path(source),
            "source_sha256": checkpoints.sha256_of(source)}
    export(model, out, meta)
    log(f"=> wrote {out}: {out.stat().st_size:,} bytes (the checkpoint: {source.stat().st_size:,} bytes)")
    return out
