"""``python -m apot_utils quantize``: post-training quantization of a full-precision checkpoint."""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

from torch import nn

from ..core.checks import check_count
from ..core.levels import FULL_PRECISION
from ..fakequant.evaluate import check_model_computes
from ..fakequant.loading import checkpoint_path, load_model
from ..fakequant.ptq import Calibration, post_training_quantize
from ..fakequant.spec import ModelSpec
from ..files import checkpoints, data, downloads
from ..files.paths import new_file


def quantize_checkpoint(spec: ModelSpec, init, out, calib: int = 512, calibration: Calibration = Calibration(),
                        data_source=None, log: Callable[[str], None] = print) -> nn.Module:
    """Post-training quantization (:func:`~apot_utils.fakequant.ptq.post_training_quantize`) of the
    full-precision checkpoint ``init`` ('release' or a path) to the model ``spec`` describes, on ``calib``
    training images, written to ``out`` (refused if it exists) with ``spec``'s metadata, where it came from
    and how it was calibrated; a model that computes NaN or infinity is not written, and the written file is
    loaded back and run once (removed if that fails). Returns the quantized model."""
    if spec.dataset != "cifar10":
        raise ValueError("post-training quantization is implemented for cifar10 (its training images calibrate α)")
    if not spec.quantized:
        raise ValueError("post-training quantization needs a bitwidth of 2..8, not 32 (full precision)")
    check_count("--calib", calib, allow_none=False)
    out = new_file(out)
    if out.suffix not in (".tar", ".pth", ".pt"):
        raise ValueError(f"quantize writes a PyTorch checkpoint: name it .pth.tar, .pth or .pt, not {out.name} (export "
                         "it to .safetensors or .onnx afterwards)")
    path = checkpoint_path(init, spec.dataset, spec.arch, FULL_PRECISION)
    init_bit = checkpoints.checkpoint_meta(path).get("bit", FULL_PRECISION)
    if init_bit != FULL_PRECISION:
        raise ValueError(f"{path} is a {init_bit}-bit checkpoint: post-training quantization starts from a "
                         "full-precision (32-bit) one")
    full_precision = load_model(spec.dataset, spec.arch, FULL_PRECISION, path, log=lambda line: None)
    train_images = data.load_cifar10(data_source, train=True, sample=calib, seed=calibration.seed)
    log(f"=> calibrating {spec.bit}-bit {spec.scheme} {spec.arch} on {train_images.source}")
    model = post_training_quantize(full_precision, spec, data.normalize(train_images.x), calibration, log)
    meta = spec.meta() | {
        "source": data.display_path(path), "source_sha256": downloads.sha256_of(path),
        "post_training": {**asdict(calibration), "calib_images": len(train_images), "calib_source": train_images.source}}
    check_model_computes(model, spec.image_size, f"the {spec.describe()} calibrated from {path}")
    checkpoints.save_checkpoint({"state_dict": model.state_dict(), "meta": meta}, out)
    try:            # the file as validate will read it
        check_model_computes(load_model(spec.dataset, spec.arch, spec.bit, out, log=lambda line: None),
                             spec.image_size, f"the written {out}")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    log(f"=> wrote {out}")
    return model
