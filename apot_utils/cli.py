"""Command line: python -m apot_utils validate|train|quantize|export|fetch ... (--help for the options)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .core.levels import FULL_PRECISION, SCHEMES
from .core.reference import WEIGHT_NORMS
from .fakequant.models import ARCHS, BITS
from .fakequant.ptq import ACT_RULES, BATCHNORM_RULES, PTQ_TERMS, PTQ_WEIGHT_NORM, Calibration
from .files.checkpoints import CheckpointError


RECIPE_FLAGS = ("lr", "weight_decay", "momentum", "act_alpha_lr", "act_alpha_weight_decay", "weight_alpha_lr",
                "weight_alpha_weight_decay", "alpha_grad_scale", "clip_weight_grad")   # Recipe fields with a flag each


def _at_least(low: int):
    """argparse type: an integer of at least ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


_positive, _non_negative = _at_least(1), _at_least(0)


def _workers(requested: int | None) -> int:
    """Data-loading processes: as asked, or the CPUs this process may use (at most 8)."""
    import os

    if requested is not None:
        return requested
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # macOS: no affinity
    return min(8, usable)


def _common(p: argparse.ArgumentParser, data: bool = True, device: bool = True) -> None:
    """The model flags every command takes; ``data`` (--scheme, --data, --batch-size) and ``device`` (--device) only
    where the command uses them: a flag a command would ignore is not offered (argparse refuses it)."""
    p.add_argument("--dataset", choices=sorted(ARCHS), default=None,
                   help="default cifar10 (validate, export: the checkpoint's own)")
    p.add_argument("--arch", default=None, help="cifar10: resnet20/32/44/56, mobilenet_v2; imagenet: resnet18/34, "
                                                "mobilenet_v2 (default resnet20 / resnet18; validate, export: the checkpoint's own)")
    p.add_argument("--bit", type=int, choices=BITS, default=None,
                   help="bitwidth, 32 = full precision (validate: default the checkpoint's own, or 4; train: default 4)")
    if data:
        p.add_argument("--scheme", choices=SCHEMES, default=None, help="default apot (validate: the checkpoint's own)")
        p.add_argument("--data", default=None, help="cifar10: .npz / JPEG .zip / 'torchvision'; imagenet: ImageFolder dir")
        p.add_argument("--batch-size", type=_positive, default=None, help="images a batch (at least 1)")
    if device:
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")


DEFAULT_ARCH = {"cifar10": "resnet20", "imagenet": "resnet18"}
CALIBRATION = Calibration()          # quantize's calibration defaults: the library's


def _model_from_checkpoint(args) -> None:
    """--dataset and --arch not given: validate and export take them from a PyTorch checkpoint's metadata (the
    release's files have none); otherwise cifar10 and its default architecture."""
    meta = {}
    path = getattr(args, "checkpoint", "release")
    if args.command in ("validate", "export") and path != "release" and Path(path).is_file():
        try:                   # whatever the file's name: an exported file, an ONNX model, a checkpoint
            if str(path).endswith(".safetensors"):
                from .integer.format import read_exported
                meta = read_exported(path)[1]
            elif str(path).endswith(".onnx"):
                from .deploy.runtime import read_metadata
                meta = read_metadata(path)
            else:
                from .files.checkpoints import checkpoint_meta
                meta = checkpoint_meta(path)
        except (CheckpointError, OSError, ValueError, ImportError):
            meta = {}          # the command itself reports what is wrong with the file
    known = isinstance(meta.get("dataset"), str) and meta["dataset"] in ARCHS   # else the loader names what is wrong
    args.dataset = args.dataset or (meta["dataset"] if known else None) or "cifar10"
    same = known and meta["dataset"] == args.dataset and isinstance(meta.get("arch"), str) \
        and meta["arch"] in ARCHS[args.dataset]
    args.arch = args.arch or (meta["arch"] if same else None) or DEFAULT_ARCH[args.dataset]


def _take_the_runs_model(args) -> None:
    """train --resume: the model is the run's (dataset, arch, bit, scheme as its last checkpoint records them);
    one of them given otherwise is refused, naming both (CheckpointError: the command's clean error)."""
    from .files.checkpoints import checkpoint_meta

    last = Path(args.out or "") / "checkpoint.pth.tar"
    if args.out is None or not last.is_file():
        return                     # train itself says that there is nothing to resume
    meta = checkpoint_meta(last)
    asked = {k: getattr(args, k) for k in ("dataset", "arch", "bit", "scheme") if getattr(args, k) is not None}
    differ = [f"--{k} {v} (the run: {meta.get(k, 'apot' if k == 'scheme' else None)})" for k, v in asked.items()
              if v != meta.get(k, "apot" if k == "scheme" else None)]
    if differ:
        raise CheckpointError(f"--resume continues the run in {args.out}, a {meta.get('bit')}-bit {meta.get('scheme', 'apot')} "
                              f"{meta.get('arch')} {meta.get('dataset')}; asked for {', '.join(differ)}. For another "
                              "model, start a new run with another --out")
    for key in ("dataset", "arch", "bit", "scheme"):
        if key in meta:
            setattr(args, key, meta[key])


def main(argv=None) -> int:
    from .core.version import __version__

    parser = argparse.ArgumentParser(prog="python -m apot_utils", description=__doc__, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"apot-utils {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    v = commands.add_parser("validate", allow_abbrev=False, help="validate a checkpoint, printing the release's log")
    _common(v)
    v.add_argument("--checkpoint", default="release", help="'release' (the authors' file) or a path")
    v.add_argument("--limit", type=_positive, default=None, help="validate the first N images only (N >= 1)")
    v.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar with the time left on stderr (default: when stderr is a terminal)")
    v.add_argument("--workers", type=_non_negative, default=None, help="ImageNet data-loading processes (default: the CPUs this process may use, at most 8)")
    t = commands.add_parser("train", allow_abbrev=False, help="quantization-aware training with the release's recipe (torchrun for several processes)")
    _common(t)
    t.add_argument("--init", default=None, help="start from 'release' (the authors' checkpoint of --init-bit) or a path")
    t.add_argument("--init-bit", type=int, choices=BITS, default=None,
                   help="with --init release: which released bitwidth (default 32); with a path: its bitwidth, when the "
                        "file does not record it (the authors' ImageNet files)")
    t.add_argument("--terms", type=_positive, default=None,
                   help="n, the number of additive terms (default: a quantized --init's, else the release's, ceil(b/2))")
    t.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="one weight α per output channel (default: as a quantized --init of the same bitwidth was made, else no)")
    t.add_argument("--out", default=None, help="run folder (default runs/<arch>_<bit>bit)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with the recipe it was started with")
    t.add_argument("--val-data", default=None, help="cifar10: test .npz / .zip (default as validate); imagenet: val ImageFolder")
    t.add_argument("--epochs", type=_positive, default=None, help="a shorter (or longer) schedule; decay epochs scale with it")
    t.add_argument("--milestones", type=_positive, nargs="*", default=None, help="epochs at which every lr is multiplied by 0.1")
    for name in RECIPE_FLAGS[:-1]:
        t.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, help="override the recipe's value")
    t.add_argument("--clip-weight-grad", action=argparse.BooleanOptionalAction, default=None,
                   help="stop weight gradients beyond ±α above 2 bits (default: the recipe's; ImageNet yes, CIFAR-10 no)")
    t.add_argument("--subset", type=_positive, default=None, help="train on N images drawn by a seeded shuffle")
    t.add_argument("--val-subset", type=_positive, default=None, help="validate on the first N images only")
    t.add_argument("--max-steps", type=_positive, default=None, help="at most N steps an epoch")
    t.add_argument("--data-on-device", action="store_true", help="CIFAR-10: keep the data set on the GPU, augment there")
    t.add_argument("--workers", type=_non_negative, default=None, help="ImageNet data-loading processes per training process (default: the CPUs this process may use, at most 8)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=_positive, default=20, help="TensorBoard scalars every N steps")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm running statistics fixed while training")
    t.add_argument("--no-calibrate", action="store_true",
                   help="from a full-precision --init, keep the release's starting α (3.0 weights, 8.0 activations) "
                        "instead of choosing them by post-training quantization")
    t.add_argument("--teacher", default=None, help="distill from this full-precision checkpoint ('release' or a path) instead of the labels")
    q = commands.add_parser("quantize", allow_abbrev=False, help="post-training quantization of a full-precision checkpoint (no training)")
    _common(q, device=False)             # calibration runs on the CPU, in float64
    q.add_argument("--init", default="release", help="the full-precision checkpoint: 'release' or a path")
    q.add_argument("--calib", type=_positive, default=512, help="training images that calibrate α (default 512)")
    q.add_argument("--act-rule", choices=ACT_RULES, default=CALIBRATION.act_rule, help="how activation α is chosen")
    q.add_argument("--percentile", type=float, default=CALIBRATION.percentile,
                   help=f"with --act-rule percentile: which percentile (default {CALIBRATION.percentile})")
    q.add_argument("--batchnorm", choices=BATCHNORM_RULES, default=CALIBRATION.batchnorm,
                   help="BatchNorm statistics: carried over from full precision (default), re-estimated on the "
                        "calibration images, or kept unchanged")
    q.add_argument("--terms", type=_positive, default=None,
                   help="n, the number of additive terms of the APoT level sets (default: the release's, ceil(b/2), except "
                        + ", ".join(f"{n} at {b} bits" for b, n in sorted(PTQ_TERMS.items()))
                        + ", the best measured: checkpoints/scheme_comparison/ptq_ablation.json)")
    q.add_argument("--per-channel", action="store_true", help="one weight α per output channel instead of one per layer")
    q.add_argument("--weight-norm", choices=WEIGHT_NORMS, default=None,
                   help=f"how each layer's weights are normalized before quantization: mean_std (the releases': "
                        f"(w - mean) / std), std (w / std) or channel_std (w / std per output channel); default "
                        f"{PTQ_WEIGHT_NORM}, the best measured: checkpoints/scheme_comparison/ptq_ablation.json")
    q.add_argument("--seed", type=int, default=0, help="which calibration images are drawn")
    q.add_argument("--out", required=True, help="the checkpoint to write (refused if it exists)")
    e = commands.add_parser("export", allow_abbrev=False, help="write a quantized checkpoint as packed integer codes (.safetensors) "
                                           "or as an ONNX model for ONNX Runtime (.onnx)")
    _common(e, data=False, device=False)     # the model, its scheme included, is the checkpoint's
    e.add_argument("--checkpoint", default="release", help="'release' (the authors' CIFAR-10 models) or a path")
    e.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors", help="the file to write")
    e.add_argument("--variant", choices=("exact", "fast", "float"), default=None,
                   help="with --format onnx: exact (default: the integer path's logits, bit for bit), fast (QLinearConv "
                        "integer kernels) or float (no activation quantization: the speed baseline)")
    e.add_argument("--out", required=True, help="the file to write (refused if it exists)")
    f = commands.add_parser("fetch", allow_abbrev=False, help="make the reference data layout (APOT_DATA_DIR) from the public sources or local files")
    f.add_argument("--dest", default=None, help="where to build it (default data/reference)")
    f.add_argument("--from", dest="source", default=None, help="a local folder with the same layout to copy from (checked)")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        from .files.fetch import fetch
        try:
            fetch(args.dest, args.source)
        except (CheckpointError, FileNotFoundError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    if args.command == "train" and args.resume:
        try:
            _take_the_runs_model(args)
        except (CheckpointError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    _model_from_checkpoint(args)
    if args.arch not in ARCHS[args.dataset]:
        parser.error(f"--arch for {args.dataset} must be one of {sorted(ARCHS[args.dataset])}")
    from .fakequant.evaluate import reuse_freed_memory
    reuse_freed_memory()
    try:
        if args.command == "quantize":
            from .commands.quantize import quantize_checkpoint
            from .fakequant.ptq import post_training_spec
            if args.bit in (None, FULL_PRECISION):
                parser.error("quantize needs --bit 2..8")
            calibration = Calibration(args.act_rule, args.percentile, args.batchnorm, seed=args.seed,
                                      **({} if args.batch_size is None else {"batch_size": args.batch_size}))
            spec = post_training_spec(args.dataset, args.arch, args.bit, args.scheme or "apot", args.terms,
                                      args.per_channel, args.weight_norm)
            quantize_checkpoint(spec, args.init, args.out, args.calib, calibration, args.data)
        elif args.command == "export":
            from .commands.export import export_checkpoint
            if args.bit == FULL_PRECISION:
                parser.error("export needs a quantized model (--bit 2..8)")
            if args.variant is not None and args.format != "onnx":
                parser.error(f"--variant chooses an ONNX graph: add --format onnx (--format {args.format} has no variants)")
            export_checkpoint(args.dataset, args.arch, args.bit, args.checkpoint, args.out, args.format,
                              args.variant or "exact")
        elif args.command == "validate":
            from .commands.validate import run_validation
            if args.scheme is not None and str(args.checkpoint).endswith((".safetensors", ".onnx")):
                parser.error("--scheme is recorded in an exported file: drop it (validate reads the file's own)")
            run_validation(args.dataset, args.arch, args.bit, args.checkpoint, args.data, args.device,
                           args.batch_size, args.limit, args.scheme, _workers(args.workers),
                           progress=sys.stderr.isatty() if args.progress is None else args.progress)
        else:
            from .commands.train import train
            os.environ.setdefault("APOT_KERNEL_BUILD", "wait")   # a run outlasts a kernel build many times over
            train(_train_config(args))
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError, RuntimeError, FloatingPointError,
            OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if error.name not in ("onnx", "onnxruntime"):
            raise
        print(f"error: ONNX files need the deploy extra ({error.name} is not installed): "
              "pip install 'apot-utils[deploy]' (in a checkout: pip install -e '.[deploy]')", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: {args.command} stopped (files are written atomically: none is left half-written)",
              file=sys.stderr)
        return 130
    return 0


def _train_config(args):
    import dataclasses

    from .commands.train import TrainConfig
    from .fakequant.training import default_recipe, shortened

    bit = 4 if args.bit is None else args.bit
    overrides = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None}
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.milestones is not None:
        if sorted(set(args.milestones)) != list(args.milestones):
            raise ValueError(f"--milestones must be increasing epochs, each once, got {' '.join(map(str, args.milestones))}")
        overrides["milestones"] = tuple(args.milestones)
    recipe = None      # --resume without recipe options: the run's own (train checks any that are given)
    if not args.resume or overrides or args.epochs is not None:
        recipe = default_recipe(args.dataset, bit, args.arch)
        if args.epochs is not None:
            recipe = shortened(recipe, args.epochs)
        recipe = dataclasses.replace(recipe, **overrides)
    return TrainConfig(dataset=args.dataset, arch=args.arch, bit=bit, scheme=args.scheme or "apot",
                       out=args.out or f"runs/{args.arch}_{bit}bit", recipe=recipe, terms=args.terms,
                       per_channel=args.per_channel,
                       init=args.init, init_bit=args.init_bit, resume=args.resume, data_source=args.data,
                       val_source=args.val_data, subset=args.subset, val_subset=args.val_subset, max_steps=args.max_steps,
                       device=args.device, data_on_device=args.data_on_device, workers=_workers(args.workers), seed=args.seed,
                       log_every=args.log_every, progress=not args.no_progress, freeze_bn=args.freeze_bn, teacher=args.teacher,
                       calibrate_init=not args.no_calibrate)


def run() -> None:
    """The ``apot`` console script: :func:`main` with its exit status."""
    sys.exit(main())
