"""GPU benchmark (run it where a GPU is available; never in CI).

1. ImageNet-size ResNet-18, batch 256 at 224x224, inference: full precision against 2-5-bit
   APoT (apot_utils), and the reference formulation at 4 bits: images/s and peak memory.
2. The projection's effective bandwidth (4 bytes read + 4 written per value) against a plain
   device-to-device copy of the same tensor, the physical limit for an elementwise operation.
Run: python benchmarks/bench_gpu.py
"""
from __future__ import annotations

import torch
from _common import table, timed, write
from apot_utils.core.reference import reference_formulation

from apot_utils.core.levels import level_set
from apot_utils.fakequant.spec import ModelSpec
from apot_utils.fast.projection import kernel_variants, project
from apot_utils.core.reference import nearest_level


def resnet18_rows(batch: int = 256):
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    rows = []
    fp_rate = None
    for bit, formulation in [(32, "apot_utils"), (2, "apot_utils"), (3, "apot_utils"), (4, "apot_utils"),
                             (5, "apot_utils"), (4, "reference")]:
        model = ModelSpec("imagenet", "resnet18", bit).build().cuda().eval()

        def forward(model=model):
            with torch.inference_mode():
                model(x)
        if formulation == "reference":
            with reference_formulation():
                forward()
                torch.cuda.reset_peak_memory_stats()
                seconds = timed(forward, 5, "cuda")
        else:
            forward()
            torch.cuda.reset_peak_memory_stats()
            seconds = timed(forward, 10, "cuda")
        rate = batch / seconds
        fp_rate = fp_rate or rate
        rows.append({"bit": bit, "formulation": formulation, "images_s": rate, "x_fp_rate": rate / fp_rate,
                     "peak_GiB": torch.cuda.max_memory_allocated() / 2**30})
        print(rows[-1])
        del model
        torch.cuda.empty_cache()
    return rows


def bandwidth_rows(n: int = 1 << 28):
    x = torch.rand(n, device="cuda")
    copy_s = timed(lambda: x.clone(), 20, "cuda")
    rows = [{"kernel": "copy (clone)", "levels": 0, "GB_s": 8 * n / copy_s / 1e9, "x_copy": 1.0}]
    for bits in (2, 4, 6):
        levels = level_set(bits).cuda()
        eager = kernel_variants(levels, device="cuda")["eager"]
        variants = [("project (eager lookup)", lambda: eager(x)),
                    ("project (compiled where it works)", lambda: project(x, levels))]
        assert torch.equal(project(x, levels), eager(x))
        small = x[: 1 << 22]
        assert torch.equal(project(small, levels), nearest_level(small, levels))
        variants.append(("argmin reference", lambda: nearest_level(small, levels)))
        for name, fn in variants:
            m = small.numel() if name == "argmin reference" else n
            s = timed(fn, 10, "cuda")
            rate = 8 * m / s / 1e9
            rows.append({"kernel": name, "levels": 2**bits, "GB_s": rate, "x_copy": rate / rows[0]["GB_s"]})
            print(rows[-1])
    return rows


def main():
    assert torch.cuda.is_available(), "bench_gpu.py needs a CUDA GPU"
    torch.backends.cudnn.benchmark = True
    net = resnet18_rows()
    table(net)
    bw = bandwidth_rows()
    table(bw)
    four = next(r for r in net if r["bit"] == 4 and r["formulation"] == "apot_utils")
    best = max(r["x_copy"] for r in bw if r["kernel"].startswith("project") and r["levels"] == 16)
    targets = {"resnet18_4bit_x_fp_rate": four["x_fp_rate"], "target_rate": 0.6,
               "projection_x_copy_bandwidth_L16": best, "target_bandwidth": 0.5}
    print(targets)
    write("bench_gpu", net + bw, targets=targets)


if __name__ == "__main__":
    main()
