"""Command line: ``python -m apot_utils validate ...`` (``--help`` for the options)."""
from __future__ import annotations

import argparse
import sys

from .checkpoints import CheckpointError
from .levels import SCHEMES
from .models import ARCHS, BITS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=sorted(ARCHS), default="cifar10")
    p.add_argument("--arch", default="resnet20", help="cifar10: resnet20/32/44/56; imagenet: resnet18/34")
    p.add_argument("--bit", type=int, choices=BITS, default=4, help="bitwidth; 32 = full precision")
    p.add_argument("--scheme", choices=SCHEMES, default="apot")
    p.add_argument("--data", default=None, help="cifar10: .npz / JPEG .zip / 'torchvision'; imagenet: ImageFolder dir")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apot_utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    v = commands.add_parser("validate", help="validate a checkpoint, printing the release's log")
    _common(v)
    v.add_argument("--checkpoint", default="release", help="'release' (the authors' file) or a path")
    v.add_argument("--limit", type=int, default=None, help="validate the first N images only")
    v.add_argument("--workers", type=int, default=4, help="ImageNet data-loading processes")
    args = parser.parse_args(argv)
    if args.arch not in ARCHS[args.dataset]:
        parser.error(f"--arch for {args.dataset} must be one of {sorted(ARCHS[args.dataset])}")
    try:
        from .pipeline import run_validation
        run_validation(args.dataset, args.arch, args.bit, args.checkpoint, args.data, args.device,
                       args.batch_size, args.limit, args.scheme, args.workers)
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
