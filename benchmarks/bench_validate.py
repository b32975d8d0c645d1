"""CIFAR-10 validation of ResNet-20: full precision against 2/3/4/5-bit APoT, measured two ways,
each as a ratio to full precision in the same run (benchmarks/_common.interleaved: every case warmed
up, then interleaved rounds; median, min and max).

- end to end: ``python -m apot_utils validate --bit B --data test_jpeg.npz`` in a fresh process, the
  whole 10,000 images (process start, imports, model load and the first batch's kernel compilation
  included; the fused kernels already built on this machine), the 3-bit command on first use on a machine
  (empty kernel and Inductor caches), its kernel built by another process once the command has ended, the command
  computing with the eager kernel (the default) or before the first batch (``APOT_KERNEL_BUILD=wait``), the 3-bit
  command again with
  ``APOT_COMPILE=0`` (eager kernels, no fused kernel), and
  ``pipeline.run_validation`` called from Python at full precision and 3 bits (what a notebook does:
  without the command line's ``reuse_freed_memory``, glibc's default allocator settings);
- steady state: in one process, every model warmed up, ``--images`` images each round; the reference
  formulation (argmin over the N×L table, weights re-quantized every forward) on the 3-bit model too,
  with its predictions compared with ours.

Data: $APOT_DATA_DIR/cifar10/test_jpeg.npz (--data). Checkpoints: the released ones, and for 5 bits
this project's (checkpoints/, the release has none). Run: python benchmarks/bench_validate.py
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import Untimed, command, interleaved, write
from apot_utils.core.reference import reference_formulation

from apot_utils.files import data, paths
from apot_utils.fakequant.layers import frozen_weights
from apot_utils.fakequant.evaluate import reuse_freed_memory
from apot_utils.fakequant.loading import load_model
from apot_utils.fakequant.evaluate import validate_cifar10


FIVE_BIT = paths.SHIPPED_DIR / "resnet20_5bit_apot.pth.tar"     # the release has none: this project's


def checkpoint_for(bit) -> str:
    return str(FIVE_BIT) if bit == 5 else "release"


def model_for(bit):
    return load_model("cifar10", "resnet20", bit, checkpoint_for(bit), log=lambda line: None).eval()


def first_use(argv, build: str):
    """The command with empty kernel and Inductor caches, new for every run: what the first run on a new machine waits,
    with the kernel built once the command has ended (``APOT_KERNEL_BUILD=exit``, the default) or before the first
    batch (``wait``). The build after the command is waited for untimed, so that it does not compete with the next
    case."""
    def run():
        empty = Path(tempfile.mkdtemp())
        kernels = empty / "kernels"
        command(argv, env={"APOT_KERNEL_DIR": str(kernels), "APOT_KERNEL_BUILD": build,
                           "TORCHINDUCTOR_CACHE_DIR": str(empty / "inductor")})()

        def after():
            try:
                _wait_for_package(kernels)
            finally:
                shutil.rmtree(empty, ignore_errors=True)
        return Untimed(after)
    return run


def _wait_for_package(kernels: Path, timeout_s: float = 600.0) -> None:
    """Until the kernel folder holds a package or a failure marker (a background build has ended)."""
    start = time.monotonic()
    while not any(kernels.glob("*.pt2")) and not any(kernels.glob("*.failed")):
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no kernel package in {kernels} after {timeout_s:.0f} s")
        time.sleep(0.5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=os.path.join(os.environ.get("APOT_DATA_DIR", "data"), "cifar10", "test_jpeg.npz"))
    parser.add_argument("--images", type=int, default=2000, help="images a steady-state round")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    reuse_freed_memory()          # as the command line does: the same allocator settings for every case
    silent = lambda line: None  # noqa: E731
    test = data.load_npz(args.data)
    subset = test.subset(args.images)
    bits = (32, 2, 3, 4, 5)

    cli = {f"{b}-bit" if b != 32 else "full precision": command(["-m", "apot_utils", "validate", "--bit", str(b),
                                                                 "--checkpoint", checkpoint_for(b), "--data", args.data,
                                                                 "--device", "cpu"])
           for b in bits}
    for build in ("exit", "wait"):
        cli[f"3-bit, first use on a machine, build: {build}"] = first_use(
            ["-m", "apot_utils", "validate", "--bit", "3", "--data", args.data, "--device", "cpu"], build)
    cli["3-bit, APOT_COMPILE=0"] = command(["-m", "apot_utils", "validate", "--bit", "3", "--data", args.data,
                                            "--device", "cpu"], env={"APOT_COMPILE": "0"})
    for b in (32, 3):        # the same validation called from Python, without the command line's allocator settings
        call = f"from apot_utils.commands.validate import run_validation; run_validation(bit={b}, data_source={args.data!r}, device='cpu')"
        cli[f"{'full precision' if b == 32 else f'{b}-bit'}, run_validation, glibc defaults"] = command(["-c", call])
    end_to_end = interleaved(cli, args.repeat)

    models = {b: model_for(b) for b in bits}
    cases = {("full precision" if b == 32 else f"{b}-bit"): (lambda m=m: validate_cifar10(m, subset, "cpu", log=silent))
             for b, m in models.items()}

    def reference():
        with reference_formulation():
            return validate_cifar10(models[3], subset, "cpu", log=silent)
    cases["3-bit reference formulation"] = reference
    steady = interleaved(cases, args.repeat)
    with torch.no_grad(), frozen_weights(models[3]):
        ours = validate_cifar10(models[3], subset, "cpu", log=silent).predictions
    identical = bool(torch.equal(reference().predictions, ours))

    rows = []
    for kind, found, base in (("end to end, 10,000 images", end_to_end, "full precision"),
                              (f"steady state, {len(subset)} images", steady, "full precision")):
        for name, t in found.items():
            rows.append({"measure": kind, "case": name, "median_s": t["median"], "min_s": t["min"], "max_s": t["max"],
                         "first_s": t["first"], "x_full_precision": t["median"] / found[base]["median"]})
    for r in rows:
        print(f"{r['measure']:>28}  {r['case']:>28}  median {r['median_s']:7.2f} s  [{r['min_s']:.2f}, {r['max_s']:.2f}]"
              f"  x FP {r['x_full_precision']:.2f}")
    print(f"reference formulation gives the same predictions: {identical}")
    first_use_x_warm = {build: end_to_end[f"3-bit, first use on a machine, build: {build}"]["median"]
                        / end_to_end["3-bit"]["median"] for build in ("exit", "wait")}
    print("3-bit first use on a machine, x the same command with the kernel built: "
          + ", ".join(f"build {b}: {x:.2f}" for b, x in first_use_x_warm.items()))
    write("bench_validate_cpu", rows, data=str(test.source), steady_images=len(subset), repeat=args.repeat,
          reference_identical=identical, threads=torch.get_num_threads(), first_use_x_warm=first_use_x_warm)


if __name__ == "__main__":
    main()
