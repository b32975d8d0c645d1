"""Full CIFAR-10 test-set validation of ResNet-20: full precision against 2/3/4/5-bit APoT,
and each quantized model again with the reference formulation (argmin projection over the
N×L table, weights re-quantized at every forward). Seconds, images/s and ratios, same run.

Data: --data PATH.npz (default $APOT_DATA_DIR/cifar10/test_jpeg.npz). Checkpoints: the
released ones where they exist (2/3/4/32 bits); 5 bits is timed with random weights
(speed does not depend on the values). Run: python benchmarks/bench_validate.py [--limit N]
"""
from __future__ import annotations

import argparse
import os

import torch
from _common import reference_formulation, table, write

from apot_utils import checkpoints, data
from apot_utils.evaluate import pick_device
from apot_utils.models import build_model
from apot_utils.pipeline import validate_cifar10


def model_for(bit, device):
    model = build_model("cifar10", "resnet20", bit)
    if ("cifar10", "resnet20", bit) in checkpoints.RELEASED:
        checkpoints.load_into(model, checkpoints.release_path("cifar10", "resnet20", bit), "cifar10", "resnet20", bit)
    return model.to(device)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=os.path.join(os.environ.get("APOT_DATA_DIR", "data"), "cifar10", "test_jpeg.npz"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference-limit", type=int, default=2000,
                        help="images for the (slow) reference formulation; its images/s is what is compared")
    args = parser.parse_args()
    device = pick_device(args.device)
    test = data.load_npz(args.data)
    if args.limit:
        test = test.subset(args.limit)
    silent = lambda line: None  # noqa: E731
    warm = test.subset(min(len(test), 200))
    validate_cifar10(model_for(3, device), warm, device, log=silent)   # one-time compile and table builds
    rows = []
    fp = validate_cifar10(model_for(32, device), test, device, log=silent)
    rows.append({"bit": 32, "formulation": "apot_utils", "seconds": fp.seconds, "images_s": fp.images_per_second,
                 "top1": fp.top1, "x_fp_time": 1.0, "ref_over_ours": float("nan"), "identical": True})
    for bit in (2, 3, 4, 5):
        model = model_for(bit, device)
        validate_cifar10(model, warm, device, log=silent)
        ours = validate_cifar10(model, test, device, log=silent)
        ref_set = test.subset(min(len(test), args.reference_limit))
        with reference_formulation():
            ref = validate_cifar10(model, ref_set, device, log=silent)
        same = torch.equal(ref.predictions, ours.predictions[:len(ref_set)])
        rows.append({"bit": bit, "formulation": "apot_utils", "seconds": ours.seconds,
                     "images_s": ours.images_per_second, "top1": ours.top1,
                     "x_fp_time": ours.seconds / fp.seconds,
                     "ref_over_ours": ours.images_per_second / ref.images_per_second, "identical": same})
        rows.append({"bit": bit, "formulation": "reference", "seconds": ref.seconds,
                     "images_s": ref.images_per_second, "top1": ref.top1,
                     "x_fp_time": fp.images_per_second / ref.images_per_second, "ref_over_ours": float("nan"),
                     "identical": same})
        print(rows[-2], rows[-1])
    table(rows)
    worst = max(r["x_fp_time"] for r in rows if r["formulation"] == "apot_utils")
    print(f"quantized / full-precision time, worst: {worst:.2f}x (target <= 1.5x)")
    write(f"bench_validate_{device.type}", rows, data=str(test.source), images=len(test),
          targets={"worst_quantized_over_fp": worst, "target": 1.5})


if __name__ == "__main__":
    main()
