"""The integer path of an exported ResNet-20 (``integer_arithmetic``: exact integer convolutions, every
later rounding in one fixed order, the same logits on every machine) against the same file run as the float
model, on the exact first 1,000 test images in batches of 100, for 2/3/4 bits: each as a ratio to the float path
in the same run (benchmarks/_common.interleaved: warmed up, interleaved rounds, median, min and max). Also the
integer path's earlier formulation (``F.conv2d`` on float64 integers, ATen's BatchNorm, pool and 8-bit layers),
kept here to show what the fixed order costs.

Run: python benchmarks/bench_integer.py [--repeat 3]   (needs APOT_DATA_DIR)
"""
from __future__ import annotations

import argparse
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import interleaved, table, write

from apot_utils.files import batching, data
from apot_utils.commands.export import export_checkpoint
from apot_utils.integer.format import load_exported
from apot_utils.integer.layers import IntegerConv2d, integer_arithmetic
from apot_utils.fakequant.evaluate import reuse_freed_memory


@contextmanager
def previous_formulation(model):
    """The integer path as it was before it was made machine-independent: only the quantized convolutions in
    integers (``F.conv2d`` of float64 integers), everything else ATen's float kernels."""
    layers = [m for m in model.modules() if isinstance(m, IntegerConv2d)]

    def forward(self, x):
        acc = F.conv2d(self.activation_integers(x).double(), self.weight_int.double(), None, self.stride, self.padding)
        return acc.mul_(self.scale.view(1, -1, 1, 1)).to(x.dtype)
    for m in layers:
        m.forward = forward.__get__(m)
    try:
        yield
    finally:
        for m in layers:
            del m.forward


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    reuse_freed_memory()          # as the command line does
    test = data.load_npz(data.reference_file("cifar10/test_first1000_lossless.npz"))
    batches = [x for x, _ in batching.batches(test, 100)]
    folder = Path(tempfile.mkdtemp())
    rows = []
    for bit in (2, 3, 4):
        model = load_exported(export_checkpoint("cifar10", "resnet20", bit, "release",
                                                              folder / f"r{bit}.safetensors", log=lambda line: None))

        def run(mode):
            def go():
                with torch.no_grad():
                    if mode == "float":
                        return [model(x) for x in batches]
                    if mode == "integer":
                        with integer_arithmetic(model):
                            return [model(x) for x in batches]
                    with previous_formulation(model):
                        return [model(x) for x in batches]
            return go
        found = interleaved({m: run(m) for m in ("float", "integer", "previous integer")}, args.repeat)
        base = found["float"]["median"]
        for mode, t in found.items():
            rows.append({"bit": bit, "path": mode, "median s": t["median"], "min s": t["min"], "max s": t["max"],
                         "first s": t["first"], "ratio to float": t["median"] / base})
    table(rows)
    write("bench_integer_cpu", rows, images=len(test), batch=100)


if __name__ == "__main__":
    main()
