"""The steps that ``validate`` runs, callable from notebooks: build, load, validate."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from . import checkpoints, data
from .evaluate import ValidationResult, describe_device, pick_device, print_alphas, validate
from .models import build_model


def load_model(dataset: str, arch: str, bit: int | None, checkpoint: str | Path | None = "release",
               scheme: str | None = None, device="cpu", log: Callable[[str], None] = print) -> nn.Module:
    """Build the model and load ``checkpoint`` ('release', a path, or None for random weights); a
    ``.safetensors`` file that ``export`` wrote loads as :func:`apot_utils.export.load_exported`.

    bit / scheme None: taken from the checkpoint's metadata (checkpoints that training writes
    carry it); a released checkpoint needs ``bit``. The number of additive terms and per-channel
    weight α are always taken from the metadata (post-training quantization records them).
    """
    if str(checkpoint).endswith(".safetensors"):
        from .export import load_exported
        log(f"=> loading the exported integer model {checkpoint}")
        return load_exported(checkpoint, dataset=dataset, arch=arch, bit=bit).to(device)
    meta = checkpoints.checkpoint_meta(checkpoint) if checkpoint not in (None, "release") else {}
    if bit is None:
        if "bit" not in meta:
            raise checkpoints.CheckpointError("give the bitwidth (--bit): the checkpoint does not record it")
        bit = meta["bit"]
    scheme = scheme or meta.get("scheme", "apot")
    log("=> Building model...")
    quantized = bit != 32 and meta.get("bit") == bit
    model = build_model(dataset, arch, bit, scheme, meta.get("terms") if quantized else None,
                        bool(meta.get("per_channel")) if quantized else False)
    if checkpoint is not None:
        path = checkpoints.release_path(dataset, arch, bit) if str(checkpoint) == "release" else Path(checkpoint)
        kind = "full-precision" if bit == 32 else f"{bit}-bit quantized"
        log(f"=> loading the {kind} model from checkpoint")
        checkpoints.load_into(model, path, dataset, arch, bit)
        if bit != 32:
            print_alphas(model, log)
    return model.to(device)


def validate_cifar10(model: nn.Module, test: data.ImageArrays, device, batch_size: int = 100,
                     print_freq: int = 10, log: Callable[[str], None] = print) -> ValidationResult:
    """Validate on CIFAR-10 arrays in batches of ``batch_size`` (the release used 100)."""
    return validate(model, data.batches(test, batch_size, device=device), data.num_batches(test, batch_size),
                    device, "cifar", print_freq, log)


def run_validation(dataset: str = "cifar10", arch: str = "resnet20", bit: int | None = 3, checkpoint="release",
                   data_source=None, device: str = "auto", batch_size: int | None = None, limit: int | None = None,
                   scheme: str | None = None, workers: int = 4, log: Callable[[str], None] = print) -> ValidationResult:
    """What ``python -m apot_utils validate`` does; returns the result.
    batch_size (default 100 for CIFAR-10, 256 for ImageNet) and limit (the first N images) must be at least 1."""
    for name, value in (("batch_size", batch_size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
    dev = pick_device(device)
    log(describe_device(dev))
    model = load_model(dataset, arch, bit, checkpoint, scheme, dev, log)
    from .layers import quantized_layers
    from .quantize import build_pending
    layers = quantized_layers(model)
    if layers and build_pending(layers[0][1].act_levels, device=dev):
        log("=> the first batch also builds the fused projection kernel for this machine (once, about 15 s; "
            "APOT_COMPILE=0 skips it)")
    log(f"=> loading {dataset} data...")
    if dataset == "cifar10":
        test = data.load_cifar10(data_source)
        if limit is not None:
            test = test.subset(limit)
        return validate_cifar10(model, test, dev, 100 if batch_size is None else batch_size, log=log)
    if data_source is None:
        raise FileNotFoundError("ImageNet needs --data <validation ImageFolder directory>")
    loader = data.imagenet_val_loader(data_source, 256 if batch_size is None else batch_size, workers, limit)
    return validate(model, loader, len(loader), dev, "imagenet", log=log)
