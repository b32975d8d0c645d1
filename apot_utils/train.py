"""Quantization-aware training with the release's recipes: ``python -m apot_utils train``.

One process (CPU or one GPU) when launched plainly; one process per GPU (or CPU worker, gloo)
under ``torchrun``, wrapped in DistributedDataParallel. The batch size is the global one, split
over the processes. One training at a time holds the run folder (:class:`RunFolder`); a run that
fails before its first checkpoint leaves nothing there; a run stops at the step where the loss or a
clipping threshold stops being finite (α: positive), and a model with NaN or infinite values is never
saved. Every epoch writes
``checkpoint.pth.tar`` (and ``model_best.pth.tar`` when the validation accuracy improves) atomically,
with the metadata ``validate`` needs, and
TensorBoard scalars under the run folder: ``loss_train``, ``acc1_train``, ``acc5_train``, ``lr``
every ``log_every`` steps, ``loss_val``, ``acc1_val``, ``acc5_val`` every epoch (the tags of the
authors' ImageNet logs) and ``alpha/weight/<layer>``, ``alpha/act/<layer>``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import checkpoints, data
from .evaluate import AverageMeter, ValidationResult, describe_device, pick_device, validate
from .layers import FULL_PRECISION, alphas, quantized_layers
from .models import build_model
from .pipeline import load_model


@dataclass
class Recipe:
    """Optimizer and schedule. lr values are initial; every group is multiplied by ``gamma`` at each
    epoch of ``milestones`` (the release's step decay, applied to the α groups too)."""
    epochs: int
    batch_size: int                      # global, over all processes
    lr: float
    weight_decay: float
    milestones: tuple[int, ...]
    act_alpha_lr: float
    act_alpha_weight_decay: float
    weight_alpha_lr: float
    weight_alpha_weight_decay: float
    momentum: float = 0.9
    gamma: float = 0.1
    alpha_grad_scale: float = 1.0        # multiplies both α gradients of every quantized layer
    clip_weight_grad: bool = False       # no weight gradient beyond ±α above 2 bits (ImageNet release)
    weight_stats_grad: bool = False      # gradient through the weight normalization's mean/std (ImageNet release)
    warmup_steps: int = 0                # lr moves linearly from warmup_start_lr to lr over the first steps
    warmup_start_lr: float | None = None


CIFAR_WEIGHT_DECAY = {32: 5e-4, 4: 1e-4, 3: 1e-4, 2: 3e-5}   # the release's train_res20.sh


def default_recipe(dataset: str, bit: int, arch: str | None = None) -> Recipe:
    """The recipes the authors' released models were trained with.

    CIFAR-10 (``CIFAR10/main.py`` and ``train_res20.sh``): 300 epochs, batch 128, lr 0.1 for full
    precision and 0.04 quantized, ×0.1 at epochs 150 and 225, weight decay 5e-4 / 1e-4 / 3e-5 for
    32 / 4–3 / 2 bits, activation α lr 0.1 / wd 1e-4, weight α lr 0.02 / wd 1e-4; weight
    normalization without gradient through its mean and std; weight gradients never stopped.

    ImageNet ResNet-18/34: what the authors' TensorBoard logs show their runs did (their ``lr``
    scalar, one step = one iteration at batch 1,024, 1,252 steps an epoch), not the unused schedule in
    their ``main.py``: a linear warm-up over the first 2,500 steps (2 epochs) from 0.025 (ResNet-18
    2-bit: from 0.01) to the base lr, then ×0.1 at steps 37,500 / 75,000 / 112,500 (epochs 30 / 60 /
    90), ending near step 124,800 (100 epochs). Base lr: ResNet-18 0.01 at 3–5 bits and 0.04 at 2
    bits, ResNet-34 0.1 (the logs' peak lr). Weight decay 1e-4, at 2 bits 2e-5 (the release README's
    "Hyper-Params" column; the logs do not record it). Activation α lr 0.03 / wd 2e-5 and weight α lr
    0.01 / wd 1e-4 (``ImageNet/main.py``); gradient through the normalization's statistics; weight
    gradients stopped beyond ±α above 2 bits (at 2 bits the "calibrated" gradient passes them).
    ``arch`` (ImageNet only): 'resnet18' (default) or 'resnet34'.
    """
    if dataset == "cifar10":
        return Recipe(epochs=300, batch_size=128, lr=0.1 if bit == 32 else 0.04,
                      weight_decay=CIFAR_WEIGHT_DECAY.get(bit, 1e-4), milestones=(150, 225),
                      act_alpha_lr=0.1, act_alpha_weight_decay=1e-4, weight_alpha_lr=0.02, weight_alpha_weight_decay=1e-4)
    if dataset == "imagenet":
        arch = arch or "resnet18"
        if arch not in ("resnet18", "resnet34"):
            raise ValueError(f"no ImageNet recipe for {arch!r} (resnet18, resnet34)")
        lr = 0.1 if arch == "resnet34" else (0.04 if bit == 2 else 0.01)
        start = 0.01 if (arch, bit) == ("resnet18", 2) else 0.025
        return Recipe(epochs=100, batch_size=1024, lr=lr, weight_decay=2e-5 if bit == 2 else 1e-4,
                      milestones=(30, 60, 90), act_alpha_lr=0.03, act_alpha_weight_decay=2e-5, weight_alpha_lr=0.01,
                      weight_alpha_weight_decay=1e-4, clip_weight_grad=True, weight_stats_grad=True,
                      warmup_steps=2500, warmup_start_lr=start)
    raise ValueError(f"no recipe for dataset {dataset!r}")


def warmup_lr(recipe: Recipe, step: int) -> float | None:
    """The weights' lr at global step ``step`` (0-based) during the warm-up, or None after it."""
    if step >= recipe.warmup_steps or recipe.warmup_start_lr is None:
        return None
    return recipe.warmup_start_lr + (recipe.lr - recipe.warmup_start_lr) * step / recipe.warmup_steps


def shortened(recipe: Recipe, epochs: int) -> Recipe:
    """The same recipe over ``epochs`` epochs, the decay milestones and the warm-up scaled in proportion."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    scaled = tuple(sorted({max(1, round(m * epochs / recipe.epochs)) for m in recipe.milestones if m * epochs / recipe.epochs < epochs}))
    return dataclasses.replace(recipe, epochs=epochs, milestones=scaled,
                               warmup_steps=round(recipe.warmup_steps * epochs / recipe.epochs))


def parameter_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """SGD groups as the release made them: activation α, weight α, everything else."""
    groups = {"act_alpha": [], "weight_alpha": [], "other": []}
    for name, p in model.named_parameters():
        key = name.rsplit(".", 1)[-1]
        groups[key if key in ("act_alpha", "weight_alpha") else "other"].append(p)
    out = [{"params": groups["other"], "name": "weights"}]
    if groups["act_alpha"]:
        out.append({"params": groups["act_alpha"], "name": "act_alpha", "lr": recipe.act_alpha_lr,
                    "weight_decay": recipe.act_alpha_weight_decay})
    if groups["weight_alpha"]:
        out.append({"params": groups["weight_alpha"], "name": "weight_alpha", "lr": recipe.weight_alpha_lr,
                    "weight_decay": recipe.weight_alpha_weight_decay})
    return out


@dataclass
class Distributed:
    """This process's place: rank, world size, and whether it speaks for the run (rank 0)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> "Distributed":
        """Under torchrun (``WORLD_SIZE`` > 1): join the process group (NCCL on CUDA, gloo on the CPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def parameter_digest(model: nn.Module) -> str:
    """sha256 (first 16 hex digits) of every parameter's bytes, in order: equal digests, equal
    parameters. Buffers are left out: under DDP each process's BatchNorm running statistics see
    only its own last batch (rank 0's are the ones saved)."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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
    quantization on ``calib`` training images (:mod:`apot_utils.ptq`), which also carries BatchNorm's
    statistics over to the normalized weights; False keeps the release's starting α (3.0 for weights,
    8.0 for activations), from which a short run does not recover.
    teacher: a full-precision checkpoint ('release' or a path); the loss is then the cross-entropy
    between its softened predictions and the model's (:func:`distillation_loss`) instead of the labels'.
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


def _load_cifar(cfg: TrainConfig, device) -> tuple[data.ImageArrays, data.ImageArrays]:
    train = data.load_cifar10(cfg.data_source, train=True, progress=cfg.progress)
    test = data.load_cifar10(cfg.val_source)
    if cfg.subset is not None:
        train = train.sample(cfg.subset, cfg.seed)
    if cfg.val_subset is not None:
        test = test.subset(cfg.val_subset)
    if cfg.data_on_device:
        train, test = train.to(device), test.to(device)
    return train, test


def _check_counts(cfg: TrainConfig, recipe: Recipe) -> None:
    """Every count must be a positive integer: 0 or a negative number is an error, never 'all'; every rate
    a finite number, the learning rate above 0 and the others at least 0."""
    for name, value in (("subset", cfg.subset), ("val_subset", cfg.val_subset), ("max_steps", cfg.max_steps),
                        ("batch_size", recipe.batch_size), ("epochs", recipe.epochs), ("log_every", cfg.log_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
    for name in ("lr", "weight_decay", "momentum", "act_alpha_lr", "act_alpha_weight_decay", "weight_alpha_lr",
                 "weight_alpha_weight_decay", "alpha_grad_scale", "gamma"):
        value = getattr(recipe, name)
        if not (math.isfinite(value) and (value > 0 if name == "lr" else value >= 0)):
            raise ValueError(f"{name} must be a finite number {'above' if name == 'lr' else 'of at least'} 0, got {value}")


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`checkpoints.save_checkpoint` left in the run
    folder (``.checkpoint.pth.tar.*.tmp``, ``.model_best.pth.tar.*.tmp``); returns what it removed."""
    stale = [p for name in ("checkpoint.pth.tar", "model_best.pth.tar") for p in Path(out).glob(f".{name}.*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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
    """``cfg``'s terms or per_channel: as given, else the same-bitwidth quantized init's, else ``default``;
    a given value that contradicts such an init is refused."""
    given = getattr(cfg, name)
    inherited = getattr(source, name) if source is not None and source.bit == cfg.bit != FULL_PRECISION else None
    if inherited is None:
        return default if given is None else given
    if given is not None and given != inherited:
        raise ValueError(f"the {cfg.bit}-bit --init was made with {name}={inherited}, not {given}: drop that option "
                         "to fine-tune it as made")
    return inherited


def _build(cfg: TrainConfig, recipe: Recipe, device, log, calib_images: torch.Tensor | None = None,
           terms: int | None = None, per_channel: bool = False) -> nn.Module:
    """The model to train: fresh (with ``terms`` and ``per_channel``; a resumed run then loads its own state),
    or from ``cfg.init``; from a full-precision init with ``calib_images`` (normalized [N, 3, H, W]) and
    ``cfg.calibrate_init``, post-training quantized first."""
    source = None
    if cfg.init is not None and not cfg.resume:
        if str(cfg.init) == "release":
            path = checkpoints.release_path(cfg.dataset, cfg.arch, FULL_PRECISION if cfg.init_bit is None else cfg.init_bit)
        else:
            path = Path(cfg.init)
        init_bit = _init_bit(cfg, path)
        source = load_model(cfg.dataset, cfg.arch, init_bit, path, None if init_bit == FULL_PRECISION else cfg.scheme,
                            log=lambda line: None)
        terms, per_channel = _inherit(cfg, source, "terms", None), _inherit(cfg, source, "per_channel", False)
    elif not cfg.resume:
        terms, per_channel = cfg.terms, bool(cfg.per_channel)
    model = build_model(cfg.dataset, cfg.arch, cfg.bit, cfg.scheme, terms, per_channel)
    if source is not None:
        calibrate = source.bit == FULL_PRECISION and cfg.bit != FULL_PRECISION and cfg.calibrate_init and calib_images is not None
        if calibrate:
            from .ptq import post_training_quantize

            source = post_training_quantize(source, cfg.dataset, cfg.arch, cfg.bit, calib_images, cfg.scheme,
                                            log=lambda line: None, terms=terms, per_channel=per_channel)
        state, own = source.state_dict(), model.state_dict()
        wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
        if wrong:
            raise checkpoints.CheckpointError(f"{path} does not fit the model to train ({wrong[0]}; per-channel α "
                                              "against one α per layer?): pass --per-channel or --no-per-channel as it was made")
        missing, _ = model.load_state_dict(state, strict=False)
        if calibrate:
            log(f"=> initialized from {data.display_path(path)}, α chosen by post-training quantization on "
                f"{len(calib_images)} training images")
        else:
            log(f"=> initialized from {data.display_path(path)}"
                + (f" (new: {', '.join(sorted({k.rsplit('.', 1)[-1] for k in missing}))} at their defaults)" if missing else ""))
    for _, layer in quantized_layers(model):
        layer.grad_scale = recipe.alpha_grad_scale
        layer.clip_weight_grad = recipe.clip_weight_grad and cfg.bit > 2
        layer.weight_stats_grad = recipe.weight_stats_grad
    return model.to(device)


def _meta(cfg: TrainConfig, recipe: Recipe, model: nn.Module, epoch: int, best: float) -> dict:
    return {"dataset": cfg.dataset, "arch": cfg.arch, "bit": cfg.bit, "scheme": cfg.scheme,
            "terms": model.terms, "per_channel": model.per_channel,
            "level_rule": checkpoints.LEVEL_RULE, "epoch": epoch, "best_acc1": best,
            "recipe": dataclasses.asdict(recipe)}


def log_alphas(writer, model: nn.Module, step: int) -> None:
    """Every quantized layer's α as ``alpha/weight/<layer>`` and ``alpha/act/<layer>`` at ``step`` (per-channel
    weight α: their mean, as :func:`apot_utils.layers.alphas` reports it)."""
    for name, weight_alpha, act_alpha in alphas(model):
        writer.add_scalar(f"alpha/weight/{name}", weight_alpha, step)
        writer.add_scalar(f"alpha/act/{name}", act_alpha, step)


DISTILLATION_TEMPERATURE = 4.0
EVAL_GAP_WARNING = 20.0     # points of top-1 between training and validation that earn a warning


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = DISTILLATION_TEMPERATURE) -> torch.Tensor:
    """Hinton et al.'s distillation loss: T² · KL(softmax(teacher / T) ‖ softmax(student / T)), mean over
    the batch; logits [B, classes]. It asks the quantized model for the full-precision model's function
    rather than the labels, which also makes it indifferent to where the training images came from."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def train_one_epoch(model: nn.Module, batches, steps: int, optimizer, device, epoch: int, step0: int, writer,
                    log_every: int, progress: bool, alphas_of: nn.Module, freeze_bn: bool = False,
                    recipe: Recipe | None = None, teacher: nn.Module | None = None) -> dict[str, float]:
    """One pass over ``batches`` ((images, labels) pairs, ``steps`` of them). Returns the epoch's means.
    freeze_bn: BatchNorm layers stay in eval mode (running statistics fixed). recipe: its warm-up
    scales every group's lr by :func:`warmup_lr` / lr during its first steps. teacher: a model in eval
    mode whose predictions the loss follows (:func:`distillation_loss`)."""
    from tqdm.auto import tqdm

    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    loss_m, top1_m, top5_m = AverageMeter(), AverageMeter(), AverageMeter()
    bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="step", disable=not progress, leave=False)
    start = time.perf_counter()
    for i, (images, labels) in enumerate(batches):
        if i == steps:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if recipe is not None and recipe.warmup_steps and step0 + i <= recipe.warmup_steps:
            warm = warmup_lr(recipe, step0 + i)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * (1.0 if warm is None else warm / recipe.lr)
        output = model(images)
        if teacher is None:
            loss = F.cross_entropy(output, labels)
        else:
            with torch.no_grad():
                target = teacher(images)
            loss = distillation_loss(output, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss is {loss.item()} at epoch {epoch}, step {step0 + i + 1}: "
                                     "the run diverged (try a lower --lr); any checkpoint of the run is from before it")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _check_thresholds(alphas_of, epoch, step0 + i + 1)
        with torch.no_grad():
            ranked = output.topk(5, dim=1).indices.eq(labels[:, None])
        n = labels.numel()
        loss_m.update(loss.item(), n)
        top1_m.update(100.0 * ranked[:, 0].float().mean().item(), n)
        top5_m.update(100.0 * ranked.any(1).float().mean().item(), n)
        step = step0 + i + 1
        if writer is not None and (step % log_every == 0 or i == steps - 1):
            writer.add_scalar("loss_train", loss_m.val, step)
            writer.add_scalar("acc1_train", top1_m.val, step)
            writer.add_scalar("acc5_train", top5_m.val, step)
            writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step)
            log_alphas(writer, alphas_of, step)
        bar.update()
        bar.set_postfix(loss=f"{loss_m.avg:.3f}", acc1=f"{top1_m.avg:.1f}")
    bar.close()
    return {"loss": loss_m.avg, "acc1": top1_m.avg, "acc5": top5_m.avg, "seconds": time.perf_counter() - start}


def _check_thresholds(model: nn.Module, epoch: int, step: int) -> None:
    """Stop at the step where a clipping threshold stops being a finite positive number (an α learning rate
    too high for the run: SGD can push α below zero, where the quantizer means nothing)."""
    for name, layer in quantized_layers(model):
        for kind, group in (("act_alpha", "--act-alpha-lr"), ("weight_alpha", "--weight-alpha-lr")):
            alpha = getattr(layer, kind)
            if not bool((torch.isfinite(alpha) & (alpha > 0)).all()):
                raise FloatingPointError(
                    f"{kind} of layer {name} became {alpha.detach().flatten()[:3].tolist()} at epoch {epoch}, step {step}: "
                    f"a clipping threshold must stay positive; lower {group} (the recipe's is meant for 300 epochs, a "
                    "short fine-tune from calibrated α needs far less); any checkpoint of the run is from before it")


@dataclass
class TrainResult:
    """best_acc1 (%), the last validation, per-epoch seconds, and the run folder."""
    best_acc1: float
    last: ValidationResult
    epoch_seconds: list[float]
    out: Path
    digest: str


class RunFolder:
    """The run folder ``out``, held by one training at a time: ``fcntl.flock`` on ``out/.lock`` (released when
    the process ends, however it ends). A second training into the same folder gets a FileExistsError.
    :meth:`discard_failed_start` removes what a run that wrote no checkpoint created (the TensorBoard
    folder, the lock file, the folder itself when it is left empty)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.created = not self.out.exists()
        self.tensorboard_existed = (self.out / "tensorboard").exists()
        self._lock = None

    def __enter__(self) -> "RunFolder":
        import fcntl

        self.out.mkdir(parents=True, exist_ok=True)
        lock_path = self.out / ".lock"
        self.lock_created = not lock_path.exists()
        self._lock = open(lock_path, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "unknown"
            self._lock.close()
            raise FileExistsError(f"another training (process {holder}) is running in {self.out}: wait for it to "
                                  "end, or choose another --out") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.close()

    def discard_failed_start(self) -> None:
        if not self.tensorboard_existed:
            shutil.rmtree(self.out / "tensorboard", ignore_errors=True)
        if self.lock_created:
            (self.out / ".lock").unlink(missing_ok=True)
        if self.created and not any(self.out.iterdir()):
            self.out.rmdir()


def _saved_run(last_path: Path) -> dict:
    """The last checkpoint of a run to resume, checked to be one that :func:`train` wrote."""
    saved = checkpoints.read_checkpoint(last_path)
    meta = saved.get("meta", {})
    lacking = [k for k in ("optimizer", "scheduler") if k not in saved] + \
              [f"meta {k}" for k in ("epoch", "best_acc1", "recipe") if k not in meta]
    if lacking:
        raise checkpoints.CheckpointError(
            f"{last_path} is not the checkpoint of a training run (it lacks {', '.join(lacking)}): to go on from its "
            f"weights, start a new run with --init {last_path} and another --out")
    return saved


def _resumed_recipe(saved: dict, asked: Recipe | None, out: Path) -> Recipe:
    """The recipe the run in ``out`` was started with; ``asked`` (when given) must be the same."""
    recorded = dict(saved["meta"]["recipe"])
    run = Recipe(**{**recorded, "milestones": tuple(recorded["milestones"])})
    if asked is not None and asked != run:
        changed = [f"{f.name} {getattr(asked, f.name)} (the run: {getattr(run, f.name)})"
                   for f in dataclasses.fields(Recipe) if getattr(asked, f.name) != getattr(run, f.name)]
        raise ValueError(f"--resume continues the run in {out} with the recipe it was started with; asked for "
                         f"{'; '.join(changed)}. To train on with another schedule, start a new run with "
                         f"--init {out / 'checkpoint.pth.tar'} and another --out")
    return run


def _check_finite_parameters(model: nn.Module, epoch: int, last_path: Path) -> None:
    """Refuse to save a model with NaN or infinite values: the run diverged."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        kept = f"{last_path} is from before it" if last_path.exists() else "no checkpoint was written"
        raise FloatingPointError(f"after epoch {epoch} the model holds NaN or infinite values ({', '.join(bad[:3])}): "
                                 f"the run diverged (try a lower --lr); {kept}")


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train (or fine-tune) one model as ``cfg`` says; see the module docstring for what it writes."""
    device = pick_device(cfg.device)
    where = Distributed.from_env(device.type)
    if device.type == "cuda" and where.world > 1:
        device = torch.device("cuda", where.local_rank)
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    last_path = out / "checkpoint.pth.tar"
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
    last_path, best_path = out / "checkpoint.pth.tar", out / "model_best.pth.tar"
    saved = _saved_run(last_path) if cfg.resume else None
    recipe = _resumed_recipe(saved, cfg.recipe, out) if saved else (cfg.recipe or default_recipe(cfg.dataset, cfg.bit, cfg.arch))
    _check_counts(cfg, recipe)
    if recipe.batch_size % where.world:
        raise ValueError(f"batch size {recipe.batch_size} does not split over {where.world} processes")
    if saved and saved["meta"]["epoch"] >= recipe.epochs:
        raise ValueError(f"nothing to do: the run in {out} already finished its {recipe.epochs} epochs")
    if where.main:
        remove_stale_temporaries(out)
    say(describe_device(device) + (f", {where.world} processes" if where.world > 1 else ""))
    torch.manual_seed(cfg.seed)

    per_process = recipe.batch_size // where.world
    if cfg.dataset == "cifar10":
        say("=> loading cifar10 data...")
        train_set, test_set = _load_cifar(cfg, device)
        steps = len(data.epoch_order(len(train_set), 0, cfg.seed, where.rank, where.world)) // per_process
        val_batches = lambda: data.batches(test_set, 100, device=device)   # noqa: E731
        val_total, style = data.num_batches(test_set, 100), "cifar"
    else:
        if cfg.data_source is None or cfg.val_source is None:
            raise FileNotFoundError("ImageNet training needs --data <train ImageFolder> and --val-data <val ImageFolder>")
        loader = data.imagenet_train_loader(cfg.data_source, per_process, cfg.workers, where.rank, where.world, cfg.seed,
                                            cfg.subset)
        val_loader = data.imagenet_val_loader(cfg.val_source, 256, cfg.workers, cfg.val_subset)
        steps, val_batches, val_total, style = len(loader), (lambda: val_loader), len(val_loader), "imagenet"
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    if steps == 0:
        raise ValueError(f"no full batch of {per_process} images per process in the training data: give more images "
                         "(--subset) or a smaller --batch-size")
    calib_images = None
    if cfg.dataset == "cifar10" and cfg.init is not None and not cfg.resume and cfg.calibrate_init:
        calib_images = data.normalize(train_set.sample(min(cfg.calib, len(train_set)), cfg.seed).x.cpu())
    if saved:
        run_meta = saved["meta"]
        for name in ("terms", "per_channel"):
            if getattr(cfg, name) is not None and getattr(cfg, name) != run_meta.get(name):
                raise ValueError(f"--resume continues the run in {out} with {name}={run_meta.get(name)}, not {getattr(cfg, name)}")
        model = _build(cfg, recipe, device, say, terms=run_meta.get("terms"), per_channel=bool(run_meta.get("per_channel")))
    else:
        model = _build(cfg, recipe, device, say, calib_images)
    teacher = None
    if cfg.teacher is not None:
        teacher = load_model(cfg.dataset, cfg.arch, FULL_PRECISION, cfg.teacher, log=lambda line: None).to(device).eval()
        say(f"=> distilling from the full-precision model {cfg.teacher}")
    optimizer = torch.optim.SGD(parameter_groups(model, recipe), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    start_epoch, best = 0, 0.0
    if saved:
        checkpoints.load_into(model, last_path, cfg.dataset, cfg.arch, cfg.bit)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start_epoch, best = saved["meta"]["epoch"], saved["meta"]["best_acc1"]
        say(f"=> resuming {last_path} at epoch {start_epoch} (best so far {best:.2f} %)")
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if where.world > 1 else model

    say(f"=> {cfg.bit}-bit {cfg.arch}, epochs {start_epoch}..{recipe.epochs - 1}, {steps} steps an epoch, "
        f"batch {recipe.batch_size} ({per_process} per process), lr {recipe.lr}, weight decay {recipe.weight_decay}")

    writer = None
    if where.main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_epoch * steps + 1 if cfg.resume else None)
        if start_epoch == 0:
            log_alphas(writer, model, 0)       # the starting thresholds
    epoch_seconds, result = [], None
    try:
        if start_epoch == 0:
            before = validate(model, val_batches(), val_total, device, style, print_freq=10**9, log=lambda line: None)
            say(f"=> before the first step: val top-1 {before.top1:.2f} %, loss {before.loss:.4f}")
            if writer is not None:
                for tag, value in (("loss_val", before.loss), ("acc1_val", before.top1), ("acc5_val", before.top5)):
                    writer.add_scalar(tag, value, 0)
        for epoch in range(start_epoch, recipe.epochs):
            if cfg.dataset == "cifar10":
                order = data.epoch_order(len(train_set), epoch, cfg.seed, where.rank, where.world)
                generator = torch.Generator(device=train_set.x.device).manual_seed(cfg.seed * 7919 + epoch * 997 + where.rank)
                batches = data.batches(train_set, per_process, order, train_augment=True, generator=generator, device=device)
            else:
                loader.sampler.set_epoch(epoch)
                batches = loader
            stats = train_one_epoch(net, batches, steps, optimizer, device, epoch, epoch * steps, writer,
                                    cfg.log_every, cfg.progress and where.main, model, cfg.freeze_bn, recipe, teacher)
            scheduler.step()
            epoch_seconds.append(stats["seconds"])
            _check_finite_parameters(model, epoch, last_path)
            result = validate(model, val_batches(), val_total, device, style, print_freq=10**9, log=say)
            best = max(best, result.top1)
            say(f"=> epoch {epoch}: train loss {stats['loss']:.4f}, train top-1 {stats['acc1']:.2f} %, "
                f"val top-1 {result.top1:.2f} % (best {best:.2f} %), {stats['seconds']:.1f} s")
            if result.top1 < stats["acc1"] - EVAL_GAP_WARNING:
                say(f"=> warning: validation top-1 ({result.top1:.1f} %) is far below training top-1 "
                    f"({stats['acc1']:.1f} %): in eval mode BatchNorm uses running statistics that have not caught "
                    "up with the weights. The recipe's lr is meant for 300 epochs; a short fine-tune from calibrated α "
                    "keeps its accuracy at about --lr 0.001")
            if where.main:
                step = (epoch + 1) * steps
                for tag, value in (("loss_val", result.loss), ("acc1_val", result.top1), ("acc5_val", result.top5)):
                    writer.add_scalar(tag, value, step)
                writer.flush()
                content = {"state_dict": model.state_dict(), "meta": _meta(cfg, recipe, model, epoch + 1, best),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
                checkpoints.save_checkpoint(content, last_path)
                if result.top1 >= best:
                    checkpoints.save_checkpoint({"state_dict": content["state_dict"], "meta": content["meta"]}, best_path)
    finally:
        if writer is not None:
            writer.close()
    digest = parameter_digest(model)
    log(f"=> rank {where.rank} parameter digest {digest}")
    return TrainResult(best, result, epoch_seconds, out, digest)
