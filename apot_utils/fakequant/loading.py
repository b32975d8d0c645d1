"""Fake-quantized models from checkpoints: :func:`load_model` (build and load, the API the commands and
chapters use), :func:`load_into` (check a checkpoint against a built model, then load it), and for any network
:func:`save_quantized` / :func:`load_quantized` (the model's description, what ``convert`` chose included, travels
in the file)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from ..core.levels import FULL_PRECISION
from ..files import checkpoints
from ..files.checkpoints import CheckpointError
from ..files.paths import new_file
from .convert import convert
from .evaluate import check_model_computes, print_alphas
from .layers import quantized_layers
from .spec import QUANTIZER_FIELDS, ModelSpec


def check_recorded(meta: dict, path, spec: ModelSpec | None = None, what: str = "checkpoint", **wanted) -> None:
    """Refuse a file whose metadata records another dataset, arch or bit than ``wanted`` (or than ``spec``'s),
    naming both; fields the metadata does not record, or that are not asked for, pass."""
    if spec is not None:
        wanted = {"dataset": spec.dataset, "arch": spec.arch, "bit": spec.bit}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if any(k in meta and meta[k] != v for k, v in wanted.items()):
        asked = " ".join(part for part in (wanted.get("bit") and f"{wanted['bit']}-bit", wanted.get("arch"),
                                           wanted.get("dataset")) if part)
        raise CheckpointError(f"{path} is a {meta.get('bit')}-bit {meta.get('arch')} {meta.get('dataset')} {what}, "
                              f"not {asked}")


def load_into(model: nn.Module, path: str | Path) -> dict:
    """Check the checkpoint at ``path`` against ``model.spec`` (dataset, arch, bit, scheme, terms, per-channel α,
    level rule, as far as its metadata records them) and the model's keys and shapes, then load it.
    Returns the checkpoint's other entries (epoch, meta, ...). Nothing is copied into ``model`` unless every
    check passes."""
    spec: ModelSpec = model.spec
    content = checkpoints.read_checkpoint(path)
    meta = content.get("meta", {})
    check_recorded(meta, path, spec)
    if spec.quantized:
        theirs = meta.get("scheme", "apot")
        if theirs != spec.scheme:
            raise CheckpointError(f"{path} holds a {theirs} model, not {spec.scheme}: pass --scheme {theirs}")
        for name, default in QUANTIZER_FIELDS.items():
            recorded = default if meta.get(name) is None else meta[name]
            if recorded != getattr(spec, name):
                raise CheckpointError(f"{path} was made with {name}={recorded}, the model has "
                                      f"{name}={getattr(spec, name)} (--{name.replace('_', '-')})")
    if meta.get("level_rule", spec.level_rule) != spec.level_rule:
        raise CheckpointError(f"{path} was made with level-set rule {meta['level_rule']!r}; this version builds "
                              f"{spec.level_rule!r}, so its levels would differ")
    state_dict = checkpoints.to_model_keys(content["state_dict"], str(path))
    if not spec.quantized:
        state_dict = checkpoints.without_unused_alphas(model, state_dict)
    checkpoints.check_state_dict(model, state_dict, str(path))
    checkpoints.check_alphas(state_dict, str(path))
    checkpoints.check_finite(state_dict, str(path))
    checkpoints.check_batchnorm_variances(state_dict, str(path))
    check_normalizable(model, state_dict, str(path))
    model.load_state_dict(state_dict)
    return {k: v for k, v in content.items() if k not in ("state_dict", "optimizer")}


def check_normalizable(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first quantized layer of ``model`` whose weight in
    ``state_dict`` is constant: its normalization (w − mean) / std would divide rounding noise by about 0 (NaN,
    or finite values with no meaning)."""
    for name, _ in quantized_layers(model):
        w = state_dict[f"{name}.weight"].detach().double()
        if not bool(w.std() > 1e-6 * w.abs().max()):
            raise CheckpointError(f"{source}: {name}.weight is constant ({float(w.flatten()[0]):.4g} everywhere, "
                                  "up to rounding); a quantized layer divides its weights by their standard deviation, "
                                  "which is 0 here")


def checkpoint_path(checkpoint: str | Path, dataset: str, arch: str, bit: int) -> Path:
    """'release' (the authors' file for dataset, arch and bit) or a path."""
    return checkpoints.release_path(dataset, arch, bit) if str(checkpoint) == "release" else Path(checkpoint)


def spec_of_checkpoint(checkpoint: str | Path | None, dataset: str, arch: str, bit: int | None,
                       scheme: str | None = None) -> ModelSpec:
    """The model to build for ``checkpoint`` ('release', a path, or None): ``bit`` / ``scheme`` None are taken
    from its metadata (a released file needs ``bit``); the number of terms and per-channel α always are, when
    it records the same bitwidth (post-training quantization and training record them), and so is the weight
    normalization (:data:`~apot_utils.fakequant.spec.QUANTIZER_FIELDS`)."""
    meta = checkpoints.checkpoint_meta(checkpoint) if checkpoint not in (None, "release") else {}
    if bit is None:
        if "bit" not in meta:
            raise CheckpointError("give the bitwidth (--bit): the checkpoint does not record it")
        bit = meta["bit"]
    same = bit != FULL_PRECISION and meta.get("bit") == bit
    options = {k: (default if meta.get(k) is None else meta[k]) if same else default for k, default in QUANTIZER_FIELDS.items()}
    return ModelSpec(dataset, arch, bit, scheme or meta.get("scheme", "apot"), **options)


def load_model(dataset: str, arch: str, bit: int | None, checkpoint: str | Path | None = "release",
               scheme: str | None = None, device="cpu", log: Callable[[str], None] = print) -> nn.Module:
    """Build the model :func:`spec_of_checkpoint` describes and load ``checkpoint`` into it ('release', a path,
    or None for random weights); logs what the release's ``test.py`` printed, and every α."""
    spec = spec_of_checkpoint(checkpoint, dataset, arch, bit, scheme)
    log("=> Building model...")
    model = spec.build()
    if checkpoint is not None:
        log(f"=> loading the {'full-precision' if not spec.quantized else f'{spec.bit}-bit quantized'} model from checkpoint")
        load_into(model, checkpoint_path(checkpoint, dataset, arch, spec.bit))
        if spec.quantized:
            print_alphas(model, log)
    return model.to(device)


CONVERSION_FIELDS = ("bit", "scheme", "terms", "per_channel", "first_last_bits", "skip", "weight_norm", "signed",
                     "keep_unsupported", "require_batchnorm")
# what a record written before a field existed meant by its absence: files converted before the BatchNorm check
UNRECORDED = {"require_batchnorm": False}


def description(model: nn.Module) -> dict:
    """What a file records of how to rebuild ``model``: ``model.spec.meta()`` for a model this package builds
    (:class:`ModelSpec`), ``{"conversion": ...}`` (what :func:`~apot_utils.fakequant.convert.convert` chose) for a
    converted network; a ValueError for a model with neither."""
    spec, conversion = getattr(model, "spec", None), getattr(model, "conversion", None)
    if spec is None and conversion is None:
        raise ValueError("the model has neither a spec (ModelSpec.build) nor a conversion record (convert): "
                         "the file records one of those, so that it can be rebuilt")
    return spec.meta() if spec is not None else {"conversion": {k: conversion[k] for k in CONVERSION_FIELDS}}


def converted_as_recorded(float_model: nn.Module | None, meta: dict, path) -> nn.Module:
    """``float_model`` converted as the file at ``path`` records (``meta["conversion"]``, :func:`description`): the
    model whose layers the file's tensors fill. A clear error without ``float_model``, for a record that is not
    :func:`description`'s, and for a float model that cannot be converted so."""
    recorded = meta["conversion"]
    if isinstance(recorded, dict):
        recorded = {**{k: v for k, v in UNRECORDED.items() if k not in recorded}, **recorded}
    if float_model is None:
        raise ValueError(f"{path} holds a converted network: pass float_model, the float architecture it was "
                         "converted from (e.g. load_quantized(path, MyNet()))")
    if not isinstance(recorded, dict) or set(recorded) != set(CONVERSION_FIELDS):
        raise CheckpointError(f"{path}: its conversion record is not what this package writes ({recorded!r:.80})")
    try:
        return convert(float_model, **{k: (v if k != "skip" else tuple(v)) for k, v in recorded.items()}).model
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: the float model cannot be converted as the file records ({error})") from None


def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write a quantized model to ``path`` (refused if it exists; written atomically): its state_dict and its
    description, ``model.spec`` for the models this package builds (:class:`ModelSpec`), ``model.conversion`` for a
    network from :func:`~apot_utils.fakequant.convert.convert` (the bitwidth, scheme, terms, per-channel α, weight
    normalization, skipped and signed layers). A model with NaN or infinite values (or, built from a spec, one that
    computes them) is refused. Returns the path;
    :func:`load_quantized` reads it back."""
    meta = description(model)
    path = new_file(path)
    spec = getattr(model, "spec", None)
    checkpoints.check_finite(model.state_dict(), "the model to save")
    if spec is not None:                # a converted network's input size is unknown here
        was_training = model.training
        check_model_computes(model, spec.image_size, "the model to save")
        model.train(was_training)
    checkpoints.save_checkpoint({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


def load_quantized(path: str | Path, float_model: nn.Module | None = None) -> nn.Module:
    """The model :func:`save_quantized` wrote to ``path``. A model of this package's (its file records a
    :class:`ModelSpec`) is built from that description; a converted network needs ``float_model``, the same float
    architecture it was converted from (any weights: they are replaced), which is converted again as recorded. Every
    check of :func:`load_into` applies (keys and shapes, α positive and finite, finite values, BatchNorm variances).
    Returns the model in eval mode on the CPU."""
    content = checkpoints.read_checkpoint(path)
    meta = content.get("meta", {})
    if "conversion" not in meta:
        if float_model is not None:
            raise ValueError(f"{path} holds a model of this package ({meta.get('arch')}), built from its description: "
                             "drop float_model")
        model = ModelSpec.from_meta(meta).build()
        load_into(model, path)
        return model.eval()
    model = converted_as_recorded(float_model, meta, path)
    state_dict = checkpoints.to_model_keys(content["state_dict"], str(path))
    checkpoints.check_state_dict(model, state_dict, f"{path} (against the float model given, converted as recorded)")
    checkpoints.check_alphas(state_dict, str(path))
    checkpoints.check_finite(state_dict, str(path))
    checkpoints.check_batchnorm_variances(state_dict, str(path))
    check_normalizable(model, state_dict, str(path))
    model.load_state_dict(state_dict)
    return model.eval()
