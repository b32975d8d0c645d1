"""Shared by the benchmark scripts: timing, machine description, result files.

The scripts use the package as installed (``pip install -e .``, as the README's commands do), through its
public switches (:func:`apot_utils.core.reference.reference_formulation`, :func:`apot_utils.fast.projection.kernel_variants`, ``APOT_COMPILE=0``).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# The benchmarks time the fused kernels: one missing on this machine is built before its first use (warm-up rounds
# absorb it), not left to a build when the process ends (apot_utils.fast.aot.build_mode). A case that times a first
# use passes its own APOT_KERNEL_BUILD.
os.environ.setdefault("APOT_KERNEL_BUILD", "wait")


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def spread(seconds: list[float]) -> dict:
    """median, min and max of repeated timings, and the runs themselves."""
    ordered = sorted(seconds)
    return {"median": ordered[len(ordered) // 2], "min": ordered[0], "max": ordered[-1], "runs": seconds}


def interleaved(cases: dict, repeat: int = 3, device: str = "cpu") -> dict[str, dict]:
    """Time every case of ``cases`` (name -> zero-argument callable) ``repeat`` times, interleaved: one
    warm-up round (every case once, its time kept as ``first``), then ``repeat`` rounds in which each
    case runs once, in the same order, so that baseline and candidates share the machine's state.
    Returns name -> :func:`spread` of the timed rounds, with ``first``."""
    first = {name: seconds_of(fn, device) for name, fn in cases.items()}
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            runs[name].append(seconds_of(fn, device))
    return {name: {**spread(runs[name]), "first": first[name]} for name in cases}


def command(argv: list[str], env: dict | None = None):
    """A zero-argument callable that runs ``python argv...`` in a fresh process (what a user waits for:
    process start, imports, model load, first batch included) and fails loudly if it fails."""
    import subprocess

    def run():
        subprocess.run([sys.executable, *argv], check=True, capture_output=True, env={**os.environ, **(env or {})})
    return run


class Untimed:
    """What a case returns for work it leaves behind (a background build to wait for, a folder to delete):
    ``seconds_of`` calls ``fn()`` once the clock has stopped."""

    def __init__(self, fn):
        self.fn = fn


def seconds_of(fn, device: str = "cpu") -> float:
    """Wall seconds of one call of ``fn`` (on CUDA, with the queued work finished on both sides); an
    :class:`Untimed` it returns is done after the clock has stopped."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    after = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if isinstance(after, Untimed):
        after.fn()
    return seconds


def timed(fn, repeat: int = 5, device: str = "cpu") -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    return spread([seconds_of(fn, device) for _ in range(repeat)])["median"]


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
