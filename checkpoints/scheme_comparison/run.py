"""Train what is still missing of the scheme comparison (issue 36): CIFAR-10 ResNet-20, APoT against uniform
and power-of-two at 4, 3 and 2 bits, each from the released full-precision model, one recipe for all.

    APOT_DATA_DIR=... python checkpoints/scheme_comparison/run.py [--worker I/N] [--threads T] [--only NAME ...]

(``--worker 0/2`` and ``--worker 1/2`` side by side, one thread each, share the runs on a 2-core CPU.)

Every run is ``python -m apot_utils train`` with the arguments in ``RUNS``; a run folder that holds a
``checkpoint.pth.tar`` is continued with ``--resume`` (the run's own recipe), a finished one is skipped. The
run folders live here, beside this script, so that a half-finished run moves with the repository to the next
machine (resume it there with the same command). The 45,000 / 5,000 split of the JPEG training images is made
once into ``data/scheme_comparison/`` (git-ignored) by the seeded draw of ``checkpoints/README.md``.

The recipe, the same for every scheme and bitwidth (only the level sets differ): start from the released
full-precision ResNet-20, α chosen by post-training calibration on 512 training images, then 8 epochs of SGD
(batch 128, momentum 0.9, lr 0.004, ×0.1 after epochs 5 and 7), the loss distillation from the released
full-precision model, BatchNorm training; α learned by RCF at 2.5× (activations) and 0.5× (weights) the
weights' lr, the ratios of the release's recipe (0.1 and 0.02 against 0.04), weight decay as the release's.
(A trial at 10× and 2.5× moved activation α by 25-60 % within 480 steps, back and forth, and the held-out
accuracy with it.) The frozen-α run is the same with both α rates 0: what learning α (RCF) buys at 2 bits.
Each bitwidth from full precision, not progressively 4 → 3 → 2: every run is independent (they can run side
by side and be resumed alone), and a 2-bit result does not carry a 3-bit run's luck.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SPLIT = ROOT / "data" / "scheme_comparison"
EPOCHS = 8
RECIPE = ["--epochs", str(EPOCHS), "--milestones", "5", "7", "--lr", "0.004", "--act-alpha-lr", "0.01",
          "--weight-alpha-lr", "0.002", "--teacher", "release", "--init", "release"]


def _runs() -> dict[str, list[str]]:
    runs = {}
    for bit in (2, 3, 4):        # the lowest bitwidths first: where the schemes differ most
        for scheme in ("apot", "uniform", "pot"):
            runs[f"{scheme}_{bit}bit_seed0"] = ["--bit", str(bit), "--scheme", scheme, "--seed", "0", *RECIPE]
        if bit == 2:
            runs["apot_2bit_frozen_alpha_seed0"] = ["--bit", "2", "--scheme", "apot", "--seed", "0", *RECIPE,
                                                   "--act-alpha-lr", "0", "--weight-alpha-lr", "0"]
    # A second seed where the schemes are closest: at 2 bits APoT and uniform differ by 0.03 points on the JPEG
    # 10,000 with seed 0. (Appended last, so that --worker I/N keeps handing the earlier runs to the same worker.)
    for scheme in ("apot", "uniform"):
        runs[f"{scheme}_2bit_seed1"] = ["--bit", "2", "--scheme", scheme, "--seed", "1", *RECIPE]
    # A second seed of the single-seed difference between APoT and uniform that passed Holm on the exact 1,000 with
    # seed 0 (3 bits): the verdict rule asks for it to replicate. (4-bit APoT against power-of-two passed too; its
    # second seed was not run for lack of CPU time.)
    for scheme in ("apot", "uniform"):
        runs[f"{scheme}_3bit_seed1"] = ["--bit", "3", "--scheme", scheme, "--seed", "1", *RECIPE]
    return runs


RUNS = _runs()


def make_split() -> tuple[Path, Path]:
    """The seeded 45,000 / 5,000 split of the JPEG training images (checkpoints/README.md), made once."""
    train, hold = SPLIT / "train45k_jpeg.npz", SPLIT / "holdout5k_jpeg.npz"
    if not (train.is_file() and hold.is_file()):
        from apot_utils.files import data
        SPLIT.mkdir(parents=True, exist_ok=True)
        t = data.load_jpeg_zip(data.reference_file("cifar10/jpeg_files.zip"), "train", progress=False)
        perm = torch.randperm(len(t), generator=torch.Generator().manual_seed(2026))
        held, kept = perm[:5000].sort().values, perm[5000:].sort().values
        for path, pick in ((train, kept), (hold, held)):
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, x=t.x[pick].numpy(), y=t.y[pick].numpy())
            os.replace(tmp, path)
    return train, hold


def finished(folder: Path) -> bool:
    last = folder / "checkpoint.pth.tar"
    if not last.is_file():
        return False
    meta = torch.load(last, weights_only=True, map_location="cpu")["meta"]
    return meta["epoch"] + 1 >= EPOCHS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None, help="run names (default: all, in order)")
    p.add_argument("--threads", type=int, default=1, help="torch threads a run")
    p.add_argument("--worker", default="0/1", help="I/N: take every N-th run, from the I-th (0-based)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args()
    index, count = (int(v) for v in args.worker.split("/"))
    train, hold = make_split()
    for number, (name, options) in enumerate(RUNS.items()):
        if (args.only is not None and name not in args.only) or number % count != index:
            continue
        folder = HERE / name
        if finished(folder):
            print(f"{name}: finished", flush=True)
            continue
        resume = (folder / "checkpoint.pth.tar").is_file()
        command = [sys.executable, "-m", "apot_utils", "train", *options, "--data", str(train), "--val-data", str(hold),
                   "--out", str(folder), "--no-progress"] + (["--resume"] if resume else [])
        print(("resume " if resume else "start ") + name + ": " + " ".join(command[1:]), flush=True)
        if args.dry_run:
            continue
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
        with open(HERE / f"{name}.log", "a") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if code != 0:
            print(f"{name}: exit {code}, see {name}.log", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
