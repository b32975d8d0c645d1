"""Projection to a level set: apot_utils.project against the argmin reference.

Time for L = 4..64 levels and N = 10^5..10^7 float32 values (CPU, and CUDA when present), at N = 10^6
the two fused kernels project chooses between (select tree, bucket lookup) against each other, and
the extra peak memory each needs (in units of the input's size; CPU: measured in a fresh
process at N = 2^24), as ratios measured in the same run.
Run: python benchmarks/bench_projection.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch
from _common import table, timed, write

from apot_utils.core.levels import level_set
from apot_utils.fast.projection import kernel_variants, project
from apot_utils.core.reference import nearest_level

PEAK = """
import sys, torch
from apot_utils.core.levels import level_set
from apot_utils.core.reference import nearest_level
from apot_utils.fast.projection import project
fn = {"project": project, "argmin": nearest_level}[sys.argv[1]]
x = torch.rand(int(sys.argv[3])); levels = level_set(int(sys.argv[2]))
fn(x[:1 << 16], levels)
def peak_kib():  # this process image's own high-water mark (ru_maxrss would carry the parent's over exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
before = peak_kib()
fn(x, levels)
print((peak_kib() - before) * 1024)
"""


def cpu_extra_peak(fn: str, bits: int, n: int) -> float:
    code = PEAK
    env = {**os.environ, "APOT_COMPILE": "0"}   # the eager kernels: the compiled one only allocates the output
    out = subprocess.run([sys.executable, "-c", code, fn, str(bits), str(n)], capture_output=True, text=True,
                         check=True, env=env)
    return float(out.stdout.split()[-1])


def cuda_extra_peak(fn, x, levels) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(x, levels)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="N up to 10^6 only")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without a GPU")
    args = parser.parse_args()
    devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    sizes = [10**5, 10**6] + ([] if args.quick else [10**7])
    rows = []
    for device in devices:
        for bits in (2, 3, 4, 5, 6):       # L = 4 .. 64
            levels = level_set(bits).to(device)
            for n in sizes:
                x = torch.rand(n, device=device)
                t_ref = timed(lambda: nearest_level(x, levels), 3, device)
                t_ours = timed(lambda: project(x, levels), 5, device)
                assert torch.equal(project(x, levels), nearest_level(x, levels))
                row = {"device": device, "levels": 2**bits, "n": n, "argmin_ms": t_ref * 1e3,
                       "project_ms": t_ours * 1e3, "speedup": t_ref / t_ours}
                if n == 10**6:          # the two fused kernels project chooses between (by number of levels)
                    variants = kernel_variants(levels, device=device)
                    for kernel in ("tree", "lookup"):
                        fused = variants[kernel]
                        assert torch.equal(fused(x), variants["eager"](x))
                        row[f"compiled_{kernel}_ms"] = timed(lambda: fused(x), 5, device) * 1e3
                    input_bytes = 4 * n
                    if device == "cpu":   # in a fresh process, at 2^24 values to rise above its start-up peak
                        row["project_peak_x_input"] = cpu_extra_peak("project", bits, 1 << 24) / (4 << 24)
                        row["argmin_peak_x_input"] = cpu_extra_peak("argmin", bits, 1 << 24) / (4 << 24)
                    else:
                        row["project_peak_x_input"] = cuda_extra_peak(project, x, levels) / input_bytes
                        row["argmin_peak_x_input"] = cuda_extra_peak(nearest_level, x, levels) / input_bytes
                rows.append(row)
                print(row)
    table([{k: r[k] for k in ("device", "levels", "n", "argmin_ms", "project_ms", "speedup")} for r in rows])
    target = next(r for r in rows if r["levels"] == 16 and r["n"] == 10**6)
    verdict = {"device": target["device"], "L16_N1e6_speedup": target["speedup"], "speedup_target": 10,
               "L16_extra_peak_x_input": target["project_peak_x_input"], "peak_target": 3}
    print(verdict)
    write("bench_projection_" + "_".join(devices), rows, targets=verdict)


if __name__ == "__main__":
    main()
