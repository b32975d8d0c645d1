"""Shared by the benchmark scripts: timing, machine description, result files."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def timed(fn, repeat: int = 5, device: str = "cpu") -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def write(name: str, rows: list[dict], **extra) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(os.environ.get("APOT_BENCH_OUT", RESULTS)) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **extra, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return out


def table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("  ".join(f"{k:>14}" for k in keys))
    for r in rows:
        print("  ".join(f"{v:>14.4g}" if isinstance(v, float) else f"{v!s:>14}" for v in r.values()))


@contextmanager
def reference_formulation():
    """The release's formulation: argmin over the N×L table, weights re-quantized every forward."""
    from apot_utils import layers, quantize

    def argmin_with_scale(x, levels, scale=None, divisor=None):
        q = quantize.argmin_project((x if divisor is None else x / divisor).clamp(0, 1), levels)
        return q if scale is None else q * scale

    saved = quantize.project, layers.frozen_weights
    quantize.project = argmin_with_scale
    layers.frozen_weights = nullcontext          # validation then quantizes the weights in every forward
    try:
        yield
    finally:
        quantize.project, layers.frozen_weights = saved
