"""``python -m apot_utils validate``: a checkpoint (fake-quantized) or an exported integer model
(``.safetensors``) on CIFAR-10 or an ImageNet folder, printing the release's log."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..core.checks import check_count
from ..fakequant.evaluate import ValidationResult, describe_device, pick_device, validate, validate_cifar10
from ..fakequant.layers import quantized_layers
from ..fakequant.loading import load_model
from ..fast.aot import defers_build
from ..fast.projection import build_pending
from ..files import data, imagenet
from ..integer.format import load_exported


def model_of(dataset: str, arch: str, bit: int | None, checkpoint="release", scheme: str | None = None, device="cpu",
             log: Callable[[str], None] = print) -> nn.Module:
    """The model ``validate`` runs: an exported integer model for a ``.safetensors`` file
    (:func:`~apot_utils.integer.format.load_exported`), an ONNX Runtime session for an ``.onnx`` file
    (:class:`~apot_utils.deploy.runtime.OnnxRuntimeModel`, CPU; its dataset, arch and bit must match any given),
    else :func:`~apot_utils.fakequant.loading.load_model`."""
    if str(checkpoint).endswith(".onnx"):
        from ..deploy.runtime import OnnxRuntimeModel
        model = OnnxRuntimeModel(checkpoint)
        meta = model.meta
        for key, given in (("dataset", dataset), ("arch", arch), ("bit", bit)):
            if given is not None and key in meta and meta[key] != given:
                raise ValueError(f"{checkpoint} holds a {meta.get('bit')}-bit {meta.get('dataset')} {meta.get('arch')}, "
                                 f"not --{key} {given}")
        if str(device) != "cpu":
            log("=> ONNX models run on the CPU (ONNX Runtime's CPU execution provider)")
        log(f"=> loading the ONNX model {checkpoint} ({meta['variant']} variant) into ONNX Runtime")
        return model
    if str(checkpoint).endswith(".safetensors"):
        log(f"=> loading the exported integer model {checkpoint}")
        return load_exported(checkpoint, dataset=dataset, arch=arch, bit=bit).to(device)
    return load_model(dataset, arch, bit, checkpoint, scheme, device, log)


RELEASE_BIT = 4      # the bitwidth validated when neither a bit nor a file that records one is given


def run_validation(dataset: str = "cifar10", arch: str = "resnet20", bit: int | None = None, checkpoint="release",
                   data_source=None, device: str = "auto", batch_size: int | None = None, limit: int | None = None,
                   scheme: str | None = None, workers: int = 4, log: Callable[[str], None] = print,
                   progress: bool = False) -> ValidationResult:
    """What ``python -m apot_utils validate`` does; returns the result. bit None: the checkpoint's own (its
    metadata), or :data:`RELEASE_BIT` for the authors' release.
    batch_size (default 100 for CIFAR-10, 256 for ImageNet) and limit (the first N images) must be at least 1;
    progress: a bar with the time left on stderr, beside the release's log lines."""
    check_count("batch_size", batch_size)
    check_count("limit", limit)
    if bit is None and str(checkpoint) == "release":
        bit = RELEASE_BIT
    dev = pick_device("cpu" if str(checkpoint).endswith(".onnx") else device)
    log(describe_device(dev))
    model = model_of(dataset, arch, bit, checkpoint, scheme, dev, log)
    layers = quantized_layers(model)
    if layers and build_pending(layers[0][1].act_levels, device=dev):
        log("=> this run uses the eager projection kernel (the same values, slower): the fused one for this machine "
            "is built by another process when this one ends (once, about 15 s)"
            if defers_build(dev.type) else
            "=> the first batch also builds the fused projection kernel for this machine (once, about 15 s; "
            "APOT_COMPILE=0 skips it)")
    log(f"=> loading {dataset} data...")
    if dataset == "cifar10":
        test = data.load_cifar10(data_source)
        if limit is not None:
            test = test.subset(limit)
        return validate_cifar10(model, test, dev, 100 if batch_size is None else batch_size, log=log, progress=progress)
    if data_source is None:
        raise FileNotFoundError("ImageNet needs --data <validation ImageFolder directory>")
    loader = imagenet.imagenet_val_loader(data_source, 256 if batch_size is None else batch_size, workers, limit)
    return validate(model, loader, len(loader), dev, "imagenet", log=log, progress=progress)
