"""Export a quantized model as integers, in the safetensors format (no pickle), and load it back.

What the file holds, per quantized convolution ``<name>``: ``<name>.weight_codes`` (the b-bit codes
of :func:`apot_utils.integer.arithmetic.weight_codes`, packed b bits each), ``<name>.weight_shape``,
``<name>.weight_alpha`` and ``<name>.act_alpha`` (float32), and ``<name>.scale``, the folded
factor s = α_a·α_w / (I_a,max·I_w,max) (float64) that turns the integer convolution into the
layer's output. The 8-bit first convolution and last linear layer: ``weight_codes`` as int8 (or
int16 where a code leaves int8) and ``weight_max``. The level sets once: ``levels.act`` (float32,
in projection order) with ``levels.act_integers``, ``levels.weight_magnitudes`` (sorted) with
``levels.weight_integers``. BatchNorm parameters and statistics and the fc bias: float32.
Metadata (strings): format, dataset, arch, bit, scheme, terms, per_channel, weight_norm, level_rule, source and
its sha256, and ``tensors_sha256`` (:func:`tensors_digest`), checked on loading.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..core.levels import LEVEL_RULE, integer_levels, projection_order, weight_projection_order
from ..fakequant.layers import FirstConv8bit, LastLinear8bit, QuantConv2d, swap
from ..fakequant.loading import check_recorded, converted_as_recorded, description
from ..fakequant.spec import ModelSpec
from ..files import atomic, checkpoints
from ..files.metadata import json_field
from ..files.paths import new_file
from .arithmetic import in_order, pack_codes, unpack_codes
from .layers import Fixed8bit, FixedOrderBatchNorm2d, FixedOrderGlobalPool, IntegerConv2d

FORMAT = "apot-integer-v1"


def export_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of the file (module docstring) for an integer model of
    :func:`apot_utils.integer.convert.to_integer` (``level_values='release'``)."""
    tensors, some = {}, None
    for name, module in model.named_modules():
        if isinstance(module, IntegerConv2d):
            some = module
            tensors |= {f"{name}.weight_codes": pack_codes(module.codes, module.bits),
                        f"{name}.weight_shape": torch.tensor(module.codes.shape, dtype=torch.int64),
                        f"{name}.weight_alpha": module.weight_alpha.float().clone(),
                        f"{name}.act_alpha": module.act_alpha.float().clone(),
                        f"{name}.scale": module.scale.clone()}
            if module.bias is not None:
                tensors[f"{name}.bias"] = module.bias.clone()
        elif isinstance(module, Fixed8bit):
            small = module.codes.abs().max() <= 127
            tensors |= {f"{name}.weight_codes": module.codes.to(torch.int8 if small else torch.int16),
                        f"{name}.weight_max": module.weight_max.clone()}
            if module.bias is not None:
                tensors[f"{name}.bias"] = module.bias.clone()
        elif isinstance(module, FixedOrderBatchNorm2d):
            for key in ("weight", "bias", "running_mean", "running_var"):
                tensors[f"{name}.{key}"] = getattr(module, key).detach().clone()
        elif isinstance(module, (QuantConv2d, FirstConv8bit, LastLinear8bit, nn.BatchNorm2d)):
            raise TypeError(f"{name} is a {type(module).__name__}: convert the model with to_integer first")
    if some is None:
        raise ValueError("the model has no integer layers: export needs a 2..8-bit model")
    if some.act_levels.dtype != torch.float32:
        raise ValueError("the file holds the release's float32 levels: convert with level_values='release'")
    bits, scheme, terms = some.bits, some.scheme, some.terms
    tensors |= {"levels.act": projection_order(bits, scheme, terms),
                "levels.act_integers": in_order(integer_levels(bits, scheme, terms), projection_order(bits, scheme, terms)),
                "levels.weight_magnitudes": weight_projection_order(bits, scheme, terms).sort().values,
                "levels.weight_integers": integer_levels(bits - 1, scheme, terms)}
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


def save_exported(model: nn.Module, out: str | Path, meta: dict | None = None) -> Path:
    """Write the integer ``model`` (:func:`apot_utils.integer.convert.to_integer`) to ``out`` (refused if it
    exists), atomically, with what rebuilds it (:func:`~apot_utils.fakequant.loading.description`: its
    :class:`ModelSpec`, or what ``convert`` chose for your own network) and ``meta``, other fields to record (where it
    came from: source, source_sha256)."""
    from safetensors.torch import save

    meta = description(model) | (meta or {})
    out = new_file(out, ".safetensors")
    tensors = export_tensors(model)
    meta = {k: v for k, v in meta.items() if k != "level_rule"}
    data = save(tensors, metadata={"format": FORMAT, "level_rule": LEVEL_RULE,
                                   "tensors_sha256": tensors_digest(tensors), **{k: json.dumps(v) for k, v in meta.items()}})
    return atomic.write_atomically(out, lambda f: f.write(data))


def level_sets_of(meta: dict) -> tuple[int, str, int | None]:
    """(bit, scheme, terms) that a file's metadata records, for a model of this package or a converted network."""
    described = meta.get("conversion", meta)
    return described["bit"], described["scheme"], described.get("terms")


def read_exported(path: str | Path, require_digest: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of an exported file; a clear error for anything else. The tensors must match the
    sha256 its metadata records (every file :func:`save_exported` writes has one); a file without it (written by
    another tool, or with the digest deleted) is refused unless ``require_digest`` is False."""
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
    if raw.get("level_rule") != LEVEL_RULE:
        raise checkpoints.CheckpointError(f"{path} was made with level-set rule {raw.get('level_rule')!r}, this "
                                          f"version builds {LEVEL_RULE!r}")
    recorded = raw.get("tensors_sha256")
    if recorded is None and require_digest:
        raise checkpoints.CheckpointError(f"{path} records no sha256 of its tensors (every file the exporter writes "
                                          "does): an edited file, or another tool's; load_exported(..., "
                                          "require_digest=False) reads it anyway")
    if recorded is not None and recorded != tensors_digest(tensors):
        raise checkpoints.CheckpointError(f"{path}: its tensors are not the ones it was exported with (their sha256 "
                                          "differs from the one in its metadata): an edited or damaged file")
    meta = {}
    for key, value in raw.items():
        if key not in ("format", "level_rule", "tensors_sha256"):
            try:
                meta[key] = json_field(path, key, value)
            except ValueError as error:
                raise checkpoints.CheckpointError(str(error)) from None
    needed = ("bit", "scheme") if isinstance(meta.get("conversion"), dict) else ("dataset", "arch", "bit", "scheme")
    missing = [k for k in needed if k not in meta.get("conversion", meta)]
    if missing:
        raise checkpoints.CheckpointError(f"{path}: its metadata lacks {', '.join(missing)}")
    return tensors, meta


def _tensor(tensors: dict[str, torch.Tensor], key: str, shape: tuple | None, path, dtypes=None,
            positive: bool = False, non_negative: bool = False) -> torch.Tensor:
    """``tensors[key]``, checked: present, of ``shape`` (None: any), of one of ``dtypes`` (None: floating),
    finite, with ``positive`` greater than 0, with ``non_negative`` at least 0 (a BatchNorm variance: 0 is a
    channel that never varied); a CheckpointError naming the file and the tensor."""
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
    if non_negative and not bool((t >= 0).all()):
        raise checkpoints.CheckpointError(f"{path}: {key} holds negative values ({float(t.min()):.3g}); it must "
                                          "not be negative")
    return t


def load_exported(path: str | Path, level_values: str = "release", dataset: str | None = None, arch: str | None = None,
                  bit: int | None = None, require_digest: bool = True, float_model: nn.Module | None = None) -> nn.Module:
    """The model of an exported file, in eval mode: the architecture its metadata describes (a file of your own
    network needs ``float_model``, the float architecture it was converted from, converted again as recorded), with
    every quantized convolution an :class:`~apot_utils.integer.layers.IntegerConv2d` and the 8-bit layers
    :class:`~apot_utils.integer.layers.Fixed8bit`, BatchNorm and the average pool their fixed-order counterparts
    (float arithmetic by default, the float model's bit for bit; inside
    :func:`~apot_utils.integer.layers.integer_arithmetic` integers and fixed-order rounding, the same on every machine).
    dataset / arch / bit, when given, must match the file. Every tensor is checked as a checkpoint is (shape, dtype,
    finite; α, ``weight_max`` and the running variances not negative; the 8-bit codes' largest 127; the tensors'
    sha256, see :func:`read_exported`) before the model is built from it."""
    tensors, meta = read_exported(path, require_digest)
    check_recorded(meta, path, what="model", dataset=dataset, arch=arch, bit=bit)
    if "conversion" in meta:
        model = converted_as_recorded(float_model, meta, path)
    else:
        if float_model is not None:
            raise ValueError(f"{path} holds a model of this package ({meta.get('arch')}), built from its description: "
                             "drop float_model")
        try:
            model = ModelSpec.from_meta(meta).build()
        except ValueError as error:
            raise checkpoints.CheckpointError(f"{path}: its metadata describes no model this version builds ({error})") from None
    bits, scheme, terms = level_sets_of(meta)
    if not torch.equal(tensors.get("levels.act", torch.empty(0)), projection_order(bits, scheme, terms)):
        raise checkpoints.CheckpointError(f"{path}: its level sets are not those of a {bits}-bit {scheme} "
                                          f"model with terms={terms}: its metadata and its tensors disagree")
    replacements = {}
    for name, module in model.named_modules():
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
            bias = None if module.bias is None else _tensor(tensors, f"{name}.bias", module.bias.shape, path)
            replacement = IntegerConv2d(
                codes, _tensor(tensors, f"{name}.weight_alpha", module.weight_alpha.shape, path, positive=True),
                _tensor(tensors, f"{name}.act_alpha", (), path, positive=True),
                module.stride, module.padding, module.bit, module.scheme, module.terms, level_values,
                dilation=module.dilation, groups=module.groups, bias=bias, signed=module.signed)
        elif isinstance(module, (FirstConv8bit, LastLinear8bit)):
            codes = _tensor(tensors, f"{name}.weight_codes", module.weight.shape, path, (torch.int8, torch.int16))
            if int(codes.max()) != 127:       # round(w / max(w) · 127): the largest weight's code is 127
                raise checkpoints.CheckpointError(f"{path}: {name}.weight_codes reach {int(codes.max())}; the largest "
                                                  "8-bit code is 127")
            weight_max = _tensor(tensors, f"{name}.weight_max", (), path, positive=True)
            bias = None if module.bias is None else _tensor(tensors, f"{name}.bias", module.bias.shape, path)
            conv = (module.stride, module.padding, module.dilation) if isinstance(module, FirstConv8bit) else None
            replacement = Fixed8bit(codes.long(), weight_max, bias, conv)
        elif isinstance(module, nn.BatchNorm2d):
            replacement = FixedOrderBatchNorm2d(module.num_features, module.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(replacement, key).data.copy_(_tensor(tensors, f"{name}.{key}", (module.num_features,), path,
                                                             non_negative=key == "running_var"))
        elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            replacement = FixedOrderGlobalPool(module)
        else:
            continue
        replacements[name] = replacement
    return swap(model, replacements).eval()
