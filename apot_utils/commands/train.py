"""``python -m apot_utils train``: quantization-aware training with the release's recipes.

One process (CPU or one GPU) when launched plainly; one process per GPU (or CPU worker, gloo) under
``torchrun``, wrapped in DistributedDataParallel: the batch size is the global one, split over the
processes, and each process validates its shard of the validation images, the results summed. One training
at a time holds the run folder (:class:`RunFolder`); a run that fails before its first checkpoint leaves
nothing there; a model with NaN or infinite values is never saved. Every epoch writes ``checkpoint.pth.tar``
(and ``model_best.pth.tar`` when the validation accuracy improves) atomically, with the metadata
``validate`` needs (:meth:`~apot_utils.fakequant.spec.ModelSpec.meta`, epoch, best accuracy, recipe), and
TensorBoard scalars under the run folder: those of :func:`~apot_utils.fakequant.training.train_one_epoch`,
and ``loss_val``, ``acc1_val``, ``acc5_val`` every epoch.

The steps: :func:`~apot_utils.commands.training_data.prepare_data`, :func:`_prepare_model`, :func:`_validate`, :func:`~apot_utils.commands.run_folder.save_epoch`, one epoch at
a time in :func:`_run_epochs`.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..core.checks import check_count
from ..core.levels import FULL_PRECISION
from ..fakequant.evaluate import ValidationResult, describe_device, pick_device, summary_line, validate
from ..fakequant.loading import checkpoint_path, load_into, load_model
from ..fakequant.ptq import post_training_quantize
from ..fakequant.spec import ModelSpec
from ..fakequant.training import (EVAL_GAP_WARNING, Recipe, check_finite_parameters, check_recipe, default_recipe,
                                  log_alphas, parameter_digest, parameter_groups, set_quantizer_options,
                                  train_one_epoch)
from ..files import checkpoints, data
from .training_data import Distributed, TrainingData, prepare_data
from .run_folder import RunFolder, remove_stale_temporaries, resumed_recipe, save_epoch, saved_run


@dataclass
class TrainConfig:
    """What ``train`` runs.

    init: checkpoint to start from ('release' = the authors' file for ``init_bit``, default full precision;
    or a path whose metadata gives its bitwidth, else ``init_bit``; a quantized file without either is
    refused, as its bitwidth cannot be read from it); parameters it lacks, such as the α of a
    full-precision model, keep their defaults. terms / per_channel: the model's number of additive
    terms and per-channel weight α; None takes them from a quantized ``init`` of the same bitwidth (a
    post-training checkpoint records them), else the release's (ceil(b/2), one α per layer). resume:
    continue the run in ``out`` from its last checkpoint, with the recipe, terms and per_channel it was
    started with (a ``recipe`` that differs is refused). subset: N training images drawn by a seeded
    shuffle; val_subset: the first N test images (ImageNet: of the validation folder); max_steps: at most
    N steps an epoch (quick runs). data_on_device: the CIFAR-10 arrays
    live on the GPU. freeze_bn: BatchNorm keeps its running statistics (eval mode) while the rest
    trains, so that training images from another source (the JPEG copy) do not replace them.
    calibrate_init: from a full-precision ``init`` (CIFAR-10), choose the starting α by post-training
    quantization on ``calib`` training images (:mod:`apot_utils.fakequant.ptq`), which also carries BatchNorm's
    statistics over to the normalized weights; False keeps the release's starting α (3.0 for weights,
    8.0 for activations), from which a short run does not recover.
    teacher: a full-precision checkpoint ('release' or a path); the loss is then the cross-entropy
    between its softened predictions and the model's (:func:`apot_utils.fakequant.training.distillation_loss`) instead of the labels'.
    """
    dataset: str = "cifar10"
    arch: str = "resnet20"
    bit: int = 4
    scheme: str = "apot"
    out: str | Path = "runs/run"
    recipe: Recipe | None = None
    init: str | Path | None = None
    init_bit: int | None = None
    terms: int | None = None
    per_channel: bool | None = None
    resume: bool = False
    data_source: str | Path | None = None
    val_source: str | Path | None = None
    subset: int | None = None
    val_subset: int | None = None
    max_steps: int | None = None
    device: str = "auto"
    data_on_device: bool = False
    workers: int = 4
    seed: int = 0
    log_every: int = 20
    progress: bool = True
    freeze_bn: bool = False
    teacher: str | Path | None = None
    calibrate_init: bool = True
    calib: int = 512


def _check_config(cfg: TrainConfig) -> None:
    for name in ("subset", "val_subset", "max_steps", "log_every"):
        check_count(name, getattr(cfg, name))


def _init_bit(cfg: TrainConfig, path: Path) -> int:
    """The bitwidth of the ``init`` checkpoint at ``path``: its metadata's, else ``cfg.init_bit``, else 32 when
    it has no trained clipping thresholds; a quantized file that records none is refused."""
    recorded = checkpoints.checkpoint_meta(path).get("bit")
    if recorded is not None:
        if cfg.init_bit is not None and cfg.init_bit != recorded and str(cfg.init) != "release":
            raise checkpoints.CheckpointError(f"{path} records bit {recorded}, not --init-bit {cfg.init_bit}")
        return recorded
    if cfg.init_bit is not None:
        return cfg.init_bit
    if checkpoints.has_trained_alphas(path):
        raise checkpoints.CheckpointError(f"{path} is a quantized checkpoint (it has trained clipping thresholds) that "
                                          "does not record its bitwidth: give it with --init-bit B")
    return FULL_PRECISION


def _inherit(cfg: TrainConfig, source: nn.Module | None, name: str, default):
    """``cfg``'s terms or per_channel: as given, else the same-bitwidth quantized init's, else ``default`` (the
    weight normalization, which ``cfg`` does not give: the init's, else ``default``);
    a given value that contradicts such an init is refused."""
    given = getattr(cfg, name, None)
    inherited = getattr(source.spec, name) if source is not None and source.spec.bit == cfg.bit != FULL_PRECISION else None
    if inherited is None:
        return default if given is None else given
    if given is not None and given != inherited:
        raise ValueError(f"the {cfg.bit}-bit --init was made with {name}={inherited}, not {given}: drop that option "
                         "to fine-tune it as made")
    return inherited


def _init_spec(cfg: TrainConfig, source: nn.Module | None) -> ModelSpec:
    """The model to train, fine-tuning ``source`` (a loaded init, or None)."""
    return ModelSpec(cfg.dataset, cfg.arch, cfg.bit, cfg.scheme, _inherit(cfg, source, "terms", None),
                     bool(_inherit(cfg, source, "per_channel", False)), _inherit(cfg, source, "weight_norm", "mean_std"))


def _prepare_model(cfg: TrainConfig, spec: ModelSpec, recipe: Recipe, device, say, source: nn.Module | None = None,
                   path: Path | None = None, calib_images: torch.Tensor | None = None) -> nn.Module:
    """``spec``'s model, fresh or from ``source`` (the init, loaded from ``path``; a full-precision one, with
    ``calib_images`` (normalized [N, 3, H, W]) and ``cfg.calibrate_init``, post-training quantized first), with
    the recipe's quantizer options set."""
    model = spec.build()
    if source is not None:
        calibrate = not source.spec.quantized and spec.quantized and cfg.calibrate_init and calib_images is not None
        if calibrate:
            source = post_training_quantize(source, spec, calib_images, log=lambda line: None)
        state, own = source.state_dict(), model.state_dict()
        wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
        if wrong:
            raise checkpoints.CheckpointError(f"{path} does not fit the model to train ({wrong[0]}; per-channel α "
                                              "against one α per layer?): pass --per-channel or --no-per-channel as it was made")
        missing, _ = model.load_state_dict(state, strict=False)
        if calibrate:
            say(f"=> initialized from {data.display_path(path)}, α chosen by post-training quantization on "
                f"{len(calib_images)} training images")
        else:
            say(f"=> initialized from {data.display_path(path)}"
                + (f" (new: {', '.join(sorted({k.rsplit('.', 1)[-1] for k in missing}))} at their defaults)" if missing else ""))
    return set_quantizer_options(model, recipe).to(device)


def _load_init(cfg: TrainConfig, path: Path) -> nn.Module:
    init_bit = _init_bit(cfg, path)
    return load_model(cfg.dataset, cfg.arch, init_bit, path, None if init_bit == FULL_PRECISION else cfg.scheme,
                      log=lambda line: None)


def _validate(model: nn.Module, run: TrainingData, device, where: Distributed) -> ValidationResult:
    """This process's shard validated, then (under torchrun) the shards' sums reduced over the processes:
    loss, top-1 and top-5 of every validation image. predictions / targets stay this shard's."""
    result = validate(model, run.val_batches(), run.val_total, device, run.style, print_freq=10**9, log=lambda line: None)
    if where.world > 1:
        n = len(result.targets)
        sums = torch.tensor([result.loss * n, result.top1 * n / 100, result.top5 * n / 100, n], dtype=torch.float64,
                            device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(sums)
        loss, top1, top5, n = sums.tolist()
        result = dataclasses.replace(result, loss=loss / n, top1=100 * round(top1) / n, top5=100 * round(top5) / n)
    return result


@dataclass
class TrainResult:
    """best_acc1 (%), the last validation, per-epoch seconds, and the run folder."""
    best_acc1: float
    last: ValidationResult
    epoch_seconds: list[float]
    out: Path
    digest: str


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train (or fine-tune) one model as ``cfg`` says; see the module docstring for what it writes."""
    device = pick_device(cfg.device)
    where = Distributed.from_env(device.type)
    if device.type == "cuda" and where.world > 1:
        device = torch.device("cuda", where.local_rank)
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    last_path = out / "checkpoint.pth.tar"
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; a run is written into a folder: choose another --out")
    if last_path.exists() and not cfg.resume:
        raise FileExistsError(f"{last_path} exists: pass --resume to continue that run, or another --out")
    if cfg.resume and not last_path.exists():
        raise FileNotFoundError(f"nothing to resume: {last_path} does not exist")
    if not where.main:
        return _train(cfg, device, where, out, log)
    run = RunFolder(out)
    with run:
        try:
            return _train(cfg, device, where, out, log)
        except BaseException:
            if not cfg.resume and not last_path.exists():
                run.discard_failed_start()
            raise


def _train(cfg: TrainConfig, device, where: Distributed, out: Path, log: Callable[[str], None]) -> TrainResult:
    say = log if where.main else (lambda line: None)
    last_path = out / "checkpoint.pth.tar"
    saved = saved_run(last_path) if cfg.resume else None
    recipe = resumed_recipe(saved, cfg.recipe, out) if saved else (cfg.recipe or default_recipe(cfg.dataset, cfg.bit, cfg.arch))
    _check_config(cfg)
    check_recipe(recipe)
    if recipe.batch_size % where.world:
        raise ValueError(f"batch size {recipe.batch_size} does not split over {where.world} processes")
    if saved and saved["meta"]["epoch"] >= recipe.epochs:
        raise ValueError(f"nothing to do: the run in {out} already finished its {recipe.epochs} epochs")
    if where.main:
        remove_stale_temporaries(out)
        if not saved and (out / "tensorboard").is_dir():    # a start killed before its first checkpoint
            shutil.rmtree(out / "tensorboard")
            say(f"=> removed {out / 'tensorboard'} of an earlier start that saved no checkpoint")
    say(describe_device(device) + (f", {where.world} processes" if where.world > 1 else ""))
    torch.manual_seed(cfg.seed)
    run_data = prepare_data(cfg, recipe, device, where, say)
    source = path = None
    if saved:
        spec = ModelSpec.from_meta(saved["meta"])
        for name in ("dataset", "arch", "bit", "scheme", "terms", "per_channel"):
            if getattr(cfg, name) is not None and getattr(cfg, name) != getattr(spec, name):
                raise ValueError(f"--resume continues the run in {out} with {name}={getattr(spec, name)}, not {getattr(cfg, name)}")
    elif cfg.init is not None:
        path = checkpoint_path(cfg.init, cfg.dataset, cfg.arch, FULL_PRECISION if cfg.init_bit is None else cfg.init_bit)
        source = _load_init(cfg, path)
        spec = _init_spec(cfg, source)
    else:
        spec = ModelSpec(cfg.dataset, cfg.arch, cfg.bit, cfg.scheme, cfg.terms, bool(cfg.per_channel))
    model = _prepare_model(cfg, spec, recipe, device, say, source, path, run_data.calib_images)
    teacher = None
    if cfg.teacher is not None:
        teacher = load_model(cfg.dataset, cfg.arch, FULL_PRECISION, cfg.teacher, log=lambda line: None).to(device).eval()
        say(f"=> distilling from the full-precision model {cfg.teacher}")
    optimizer = torch.optim.SGD(parameter_groups(model, recipe), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    start_epoch, best = 0, 0.0
    if saved:
        load_into(model, last_path)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start_epoch, best = saved["meta"]["epoch"], saved["meta"]["best_acc1"]
        say(f"=> resuming {last_path} at epoch {start_epoch} (best so far {best:.2f} %)")
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if where.world > 1 else model
    per_process = recipe.batch_size // where.world
    say(f"=> {cfg.bit}-bit {cfg.arch}, epochs {start_epoch}..{recipe.epochs - 1}, {run_data.steps} steps an epoch, "
        f"batch {recipe.batch_size} ({per_process} per process), lr {recipe.lr}, weight decay {recipe.weight_decay}")
    if where.world > 1:
        say(f"=> each process validates its shard of the {run_data.val_images} validation images; the results are summed")
    writer = None
    if where.main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_epoch * run_data.steps + 1 if cfg.resume else None)
        if start_epoch == 0:
            log_alphas(writer, model, 0)       # the starting thresholds
    try:
        epoch_seconds, result, best = _run_epochs(cfg, run_data, model, net, spec, recipe, optimizer, scheduler, teacher,
                                                  writer, device, where, out, start_epoch, best, say)
    finally:
        if writer is not None:
            writer.close()
    digest = parameter_digest(model)
    log(f"=> rank {where.rank} parameter digest {digest}")
    return TrainResult(best, result, epoch_seconds, out, digest)


def _write_validation(writer, result: ValidationResult, step: int) -> None:
    for tag, value in (("loss_val", result.loss), ("acc1_val", result.top1), ("acc5_val", result.top5)):
        writer.add_scalar(tag, value, step)


def _run_epochs(cfg, run_data: TrainingData, model, net, spec, recipe, optimizer, scheduler, teacher, writer, device,
                where: Distributed, out: Path, start_epoch: int, best: float, say):
    """The epochs from ``start_epoch``: train, validate, log, save. Returns (seconds per epoch, the last
    validation, the best top-1)."""
    last_path = out / "checkpoint.pth.tar"
    epoch_seconds, result = [], None
    if start_epoch == 0:
        before = _validate(model, run_data, device, where)
        say(f"=> before the first step: val top-1 {before.top1:.2f} %, loss {before.loss:.4f}")
        if writer is not None:
            _write_validation(writer, before, 0)
    for epoch in range(start_epoch, recipe.epochs):
        stats = train_one_epoch(net, run_data.epoch_batches(epoch), optimizer, teacher=teacher, steps=run_data.steps,
                                device=device, freeze_bn=cfg.freeze_bn, recipe=recipe, epoch=epoch,
                                step0=epoch * run_data.steps, writer=writer, log_every=cfg.log_every,
                                progress=cfg.progress and where.main, alphas_of=model)
        scheduler.step()
        epoch_seconds.append(stats["seconds"])
        check_finite_parameters(model, epoch, f"{last_path} is from before it" if last_path.exists()
                                else "no checkpoint was written")
        result = _validate(model, run_data, device, where)
        say(summary_line(run_data.style, result.top1, result.top5))
        best = max(best, result.top1)
        improved = result.top1 >= best
        say(f"=> epoch {epoch}: train loss {stats['loss']:.4f}, train top-1 {stats['acc1']:.2f} %, "
            f"val top-1 {result.top1:.2f} % (best {best:.2f} %), {stats['seconds']:.1f} s")
        if result.top1 < stats["acc1"] - EVAL_GAP_WARNING:
            say(f"=> warning: validation top-1 ({result.top1:.1f} %) is far below training top-1 "
                f"({stats['acc1']:.1f} %): in eval mode BatchNorm uses running statistics that have not caught "
                "up with the weights. The recipe's lr is meant for 300 epochs; a short fine-tune from calibrated α "
                "keeps its accuracy at about --lr 0.001")
        if where.main:
            _write_validation(writer, result, (epoch + 1) * run_data.steps)
            writer.flush()
            save_epoch(out, model, spec, recipe, optimizer, scheduler, epoch + 1, best, improved)
    return epoch_seconds, result, best
