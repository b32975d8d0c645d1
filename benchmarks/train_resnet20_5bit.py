"""Train a 5-bit APoT ResNet-20 from the released full-precision checkpoint and record the epoch
time, the whole run time and the accuracy on the test images, beside the released full-precision
and 4-bit models on the same images (issue: quantization-aware training, the GPU part).

    APOT_DATA_DIR=... python benchmarks/train_resnet20_5bit.py --epochs 30 [--device cuda]

CIFAR-10 comes from ``$APOT_DATA_DIR/cifar10/jpeg_files.zip`` (the JPEG copy: accuracies about 10
points below the published ones, for every model alike). On CUDA the data set stays on the GPU.
Writes ``train_resnet20_5bit_<device>.json`` (benchmarks/results or ``$APOT_BENCH_OUT``) and copies
the best checkpoint to ``data/checkpoints/res20_5bit.pth.tar`` (or ``$APOT_BENCH_OUT``), where
notebook 03 looks for it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from _common import table, write

from apot_utils.files import data, paths
from apot_utils.commands import train
from apot_utils.fakequant import training
from apot_utils.fakequant.evaluate import pick_device
from apot_utils.fakequant.loading import load_model
from apot_utils.fakequant.evaluate import validate_cifar10


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="the release's recipe shortened to this many epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--subset", type=int, default=None, help="training images (smoke runs)")
    parser.add_argument("--max-steps", type=int, default=None, help="steps an epoch (smoke runs)")
    parser.add_argument("--test-subset", type=int, default=None, help="N sampled test images for the final table (smoke runs)")
    args = parser.parse_args()
    device = pick_device(args.device)
    archive = data.reference_file("cifar10/jpeg_files.zip")
    recipe = training.shortened(training.default_recipe("cifar10", 5), args.epochs)
    out = Path(tempfile.mkdtemp(prefix="apot-5bit-"))
    start = time.perf_counter()
    result = train.train(train.TrainConfig(bit=5, init="release", out=out / "run", recipe=recipe, data_source=archive,
                                           val_source=archive, subset=args.subset, max_steps=args.max_steps,
                                           device=str(device), data_on_device=device.type == "cuda", progress=False))
    run_seconds = time.perf_counter() - start
    best = out / "run" / "model_best.pth.tar"
    test = data.load_jpeg_zip(archive, "test")
    test = test.sample(args.test_subset) if args.test_subset else test
    quiet = dict(device=device, log=lambda line: None)
    rows = []
    for name, bit, source in (("trained here", 5, best), ("released", 4, "release"), ("released", 32, "release")):
        model = load_model("cifar10", "resnet20", bit, source, **quiet)
        rows.append({"model": name, "bit": bit, "top1_test_jpeg": validate_cifar10(model, test, device, log=lambda line: None).top1})
    table(rows)
    dest = Path(os.environ.get("APOT_BENCH_OUT") or paths.checkpoint_cache()) / "res20_5bit.pth.tar"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, dest)
    print(f"copied {best} to {dest}")
    write(f"train_resnet20_5bit_{device.type}", rows, recipe=asdict(recipe), subset=args.subset,
          epoch_seconds=result.epoch_seconds, run_seconds=run_seconds, best_val_top1=result.best_acc1,
          data="JPEG copy of CIFAR-10 ($APOT_DATA_DIR/cifar10/jpeg_files.zip): about 10 points below published accuracies")


if __name__ == "__main__":
    main()
