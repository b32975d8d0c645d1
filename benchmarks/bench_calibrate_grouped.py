"""``calibrate`` on torchvision's MobileNetV2 (issue 40), the README's case (4 bits, 8 random 32-px images): its float64
forwards with the grouped (depthwise) convolutions by im2col (``apot_utils.fakequant.im2col``, the default) against
PyTorch's own float64 grouped convolution (the baseline, which loops over the groups), interleaved in one run,
end to end; the two choose the same α (checked here) up to float64 rounding of the grid search's errors.
Reports median, min, max and the ratio of medians.
Run: python benchmarks/bench_calibrate_grouped.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import contextlib

import torch
import torchvision
from _common import interleaved, table, write

import apot_utils as apot
from apot_utils.fakequant import ptq


def calibrated(im2col: bool):
    """A fresh 4-bit conversion of the model, calibrated with or without the im2col convolutions."""
    torch.manual_seed(0)
    float_model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    images = torch.randn(8, 3, 32, 32)
    saved = ptq.im2col_convolutions
    if not im2col:
        ptq.im2col_convolutions = lambda *models: contextlib.nullcontext()
    try:
        return apot.calibrate(apot.convert(float_model, 4).model, float_model, images, log=lambda line: None)
    finally:
        ptq.im2col_convolutions = saved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    assert apot.alphas(calibrated(True)) == apot.alphas(calibrated(False)), "the two chose other α"
    timings = interleaved({"torch's float64 grouped convolution (baseline)": lambda: calibrated(False),
                           "im2col grouped convolution": lambda: calibrated(True)}, repeat=args.repeat)
    base, new = timings["torch's float64 grouped convolution (baseline)"], timings["im2col grouped convolution"]
    out = [{"calibrate MobileNetV2, 4 bits, 8 images": name, "median s": t["median"], "min": t["min"], "max": t["max"]}
           for name, t in timings.items()]
    table(out)
    print(f"speed-up (ratio of medians): {base['median'] / new['median']:.1f}×")
    write("bench_calibrate_grouped_cpu", out, speed_up=base["median"] / new["median"])


if __name__ == "__main__":
    main()
