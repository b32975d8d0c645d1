"""Command line: ``python -m apot_utils validate|train ...`` (``--help`` for the options)."""
from __future__ import annotations

import argparse
import sys

from .checkpoints import CheckpointError
from .levels import SCHEMES
from .models import ARCHS, BITS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=sorted(ARCHS), default="cifar10")
    p.add_argument("--arch", default="resnet20", help="cifar10: resnet20/32/44/56; imagenet: resnet18/34")
    p.add_argument("--bit", type=int, choices=BITS, default=None,
                   help="bitwidth, 32 = full precision (validate: default the checkpoint's own, or 4; train: default 4)")
    p.add_argument("--scheme", choices=SCHEMES, default=None, help="default apot (validate: the checkpoint's own)")
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
    t = commands.add_parser("train", help="quantization-aware training with the release's recipe (torchrun for several processes)")
    _common(t)
    t.add_argument("--init", default=None, help="start from 'release' (the authors' checkpoint of --init-bit) or a path")
    t.add_argument("--init-bit", type=int, default=32, help="with --init release: which released bitwidth (default 32)")
    t.add_argument("--out", default=None, help="run folder (default runs/<arch>_<bit>bit)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--val-data", default=None, help="cifar10: test .npz / .zip (default as validate); imagenet: val ImageFolder")
    t.add_argument("--epochs", type=int, default=None, help="a shorter (or longer) schedule; decay epochs scale with it")
    t.add_argument("--milestones", type=int, nargs="*", default=None, help="epochs at which every lr is multiplied by 0.1")
    for name in ("lr", "weight-decay", "momentum", "act-alpha-lr", "act-alpha-weight-decay", "weight-alpha-lr",
                 "weight-alpha-weight-decay", "alpha-grad-scale"):
        t.add_argument(f"--{name}", type=float, default=None, help="override the recipe's value")
    t.add_argument("--clip-weight-grad", action=argparse.BooleanOptionalAction, default=None,
                   help="stop weight gradients beyond ±α above 2 bits (default: the recipe's; ImageNet yes, CIFAR-10 no)")
    t.add_argument("--subset", type=int, default=None, help="train on N images drawn by a seeded shuffle")
    t.add_argument("--val-subset", type=int, default=None, help="validate on the first N images only")
    t.add_argument("--max-steps", type=int, default=None, help="at most N steps an epoch")
    t.add_argument("--data-on-device", action="store_true", help="CIFAR-10: keep the data set on the GPU, augment there")
    t.add_argument("--workers", type=int, default=4, help="ImageNet data-loading processes per training process")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=20, help="TensorBoard scalars every N steps")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.arch not in ARCHS[args.dataset]:
        parser.error(f"--arch for {args.dataset} must be one of {sorted(ARCHS[args.dataset])}")
    try:
        if args.command == "validate":
            from .pipeline import run_validation
            bit = 4 if args.bit is None and args.checkpoint == "release" else args.bit
            run_validation(args.dataset, args.arch, bit, args.checkpoint, args.data, args.device,
                           args.batch_size, args.limit, args.scheme, args.workers)
        else:
            from .train import train
            train(_train_config(args))
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _train_config(args):
    import dataclasses

    from .train import TrainConfig, default_recipe, shortened

    bit = 4 if args.bit is None else args.bit
    recipe = default_recipe(args.dataset, bit)
    if args.epochs is not None:
        recipe = shortened(recipe, args.epochs)
    overrides = {k: getattr(args, k) for k in ("lr", "weight_decay", "momentum", "act_alpha_lr", "act_alpha_weight_decay",
                                               "weight_alpha_lr", "weight_alpha_weight_decay", "alpha_grad_scale",
                                               "clip_weight_grad")
                 if getattr(args, k) is not None}
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.milestones is not None:
        overrides["milestones"] = tuple(args.milestones)
    return TrainConfig(dataset=args.dataset, arch=args.arch, bit=bit, scheme=args.scheme or "apot",
                       out=args.out or f"runs/{args.arch}_{bit}bit", recipe=dataclasses.replace(recipe, **overrides),
                       init=args.init, init_bit=args.init_bit, resume=args.resume, data_source=args.data,
                       val_source=args.val_data, subset=args.subset, val_subset=args.val_subset, max_steps=args.max_steps,
                       device=args.device, data_on_device=args.data_on_device, workers=args.workers, seed=args.seed,
                       log_every=args.log_every, progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
