"""CIFAR-10 validation of the released ResNet-20 models on CUDA and on the CPU of the same
machine: accuracies, how many images get another prediction (rare midpoint flips), throughput;
and the ImageNet ResNet-18 code path on CUDA over a synthetic ImageFolder.
Run where a GPU is: python benchmarks/cuda_validation.py (needs APOT_DATA_DIR)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from _common import table, write

from apot_utils.files import data, imagenet
from apot_utils.fakequant.evaluate import pick_device
from apot_utils.fakequant.loading import load_model
from apot_utils.commands.validate import run_validation
from apot_utils.fakequant.evaluate import validate_cifar10


def main():
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    pick_device("cuda")          # full float32 on the GPU (TF32 off)
    root = Path(os.environ["APOT_DATA_DIR"]) / "cifar10"
    sets = {"first100_lossless": data.load_npz(root / "test_first100_lossless.npz"),
            "test_jpeg": data.load_npz(root / "test_jpeg.npz")}
    rows = []
    silent = lambda line: None  # noqa: E731
    for bit in (32, 4, 3, 2):
        for name, images in sets.items():
            results = {}
            for device in ("cpu", "cuda"):
                model = load_model("cifar10", "resnet20", bit, "release", device=device, log=silent)
                validate_cifar10(model, images.subset(200), device, log=silent)      # warm-up
                results[device] = validate_cifar10(model, images, device, log=silent)
            cpu, gpu = results["cpu"], results["cuda"]
            rows.append({"bit": bit, "data": name, "cpu_top1": cpu.top1, "cuda_top1": gpu.top1,
                         "cpu_loss": cpu.loss, "cuda_loss": gpu.loss,
                         "images_differing": int((cpu.predictions != gpu.predictions).sum()),
                         "cpu_images_s": cpu.images_per_second, "cuda_images_s": gpu.images_per_second})
            print(rows[-1])
    table(rows)
    print("\nImageNet ResNet-18 code path on CUDA (synthetic images; accuracy means nothing):")
    with tempfile.TemporaryDirectory() as tmp:
        folder = imagenet.make_synthetic_imagefolder(Path(tmp) / "val", classes=8, per_class=32)
        synthetic = run_validation("imagenet", "resnet18", 4, checkpoint=None, data_source=folder, device="cuda",
                                   batch_size=64, workers=4)
    write("cuda_validation", rows, imagenet_synthetic={"images": len(synthetic.targets),
                                                       "images_s": synthetic.images_per_second,
                                                       "top1": synthetic.top1})


if __name__ == "__main__":
    main()
