"""Quantization-aware training, the pieces: the release's recipes (:class:`Recipe`, :func:`default_recipe`),
the SGD parameter groups, the distillation loss, and one epoch (:func:`train_one_epoch`), which stops at the
step where the loss or a clipping threshold stops being finite (α: positive). The command that runs them
(data, run folder, resume, checkpoints, torchrun) is :mod:`apot_utils.commands.train`.

TensorBoard scalars (the tags of the authors' ImageNet logs): ``loss_train``, ``acc1_train``, ``acc5_train``,
``lr`` every ``log_every`` steps, and ``alpha/weight/<layer>``, ``alpha/act/<layer>``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import check_count
from ..core.levels import FULL_PRECISION
from .evaluate import AverageMeter, ranked_correct
from .layers import alphas, quantized_layers


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


CIFAR_WEIGHT_DECAY = {FULL_PRECISION: 5e-4, 4: 1e-4, 3: 1e-4, 2: 3e-5}   # the release's train_res20.sh


def default_recipe(dataset: str, bit: int, arch: str | None = None) -> Recipe:
    """The recipes the authors' released models were trained with.

    CIFAR-10 (``CIFAR10/main.py`` and ``train_res20.sh``): 300 epochs, batch 128, lr 0.1 for full
    precision and 0.04 quantized, ×0.1 at epochs 150 and 225, weight decay 5e-4 / 1e-4 / 3e-5 for
    32 / 4–3 / 2 bits, activation α lr 0.1 / wd 1e-4, weight α lr 0.02 / wd 1e-4; weight
    normalization without gradient through its mean and std; weight gradients never stopped.

    ImageNet ResNet-18/34: what the authors' TensorBoard logs show their runs did (their ``lr``
    scalar, one step = one iteration at batch 1,024, 1,250 steps an epoch), not the unused schedule in
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
        return Recipe(epochs=300, batch_size=128, lr=0.1 if bit == FULL_PRECISION else 0.04,
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
    check_count("epochs", epochs, allow_none=False)
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



def set_quantizer_options(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Give every quantized layer of ``model`` the recipe's quantizer options: the α gradient scale, whether
    the weight gradient stops beyond ±α (above 2 bits only: the ImageNet release's 2-bit weights pass it) and
    whether the weight normalization's mean and std are differentiated. Returns the model."""
    for _, layer in quantized_layers(model):
        layer.grad_scale = recipe.alpha_grad_scale
        layer.clip_weight_grad = recipe.clip_weight_grad and layer.bit > 2
        layer.weight_stats_grad = recipe.weight_stats_grad
    return model

RATES = ("lr", "weight_decay", "momentum", "act_alpha_lr", "act_alpha_weight_decay", "weight_alpha_lr",
         "weight_alpha_weight_decay", "alpha_grad_scale", "gamma")


def check_recipe(recipe: Recipe) -> None:
    """Refuse a recipe whose counts are not positive integers or whose rates are not finite (the learning rate
    above 0, the others at least 0): 0 or a negative number is an error, never 'all'."""
    for name in ("batch_size", "epochs"):
        check_count(name, getattr(recipe, name), allow_none=False)
    for name in RATES:
        value = getattr(recipe, name)
        if not (math.isfinite(value) and (value > 0 if name == "lr" else value >= 0)):
            raise ValueError(f"{name} must be a finite number {'above' if name == 'lr' else 'of at least'} 0, got {value}")


def parameter_digest(model: nn.Module) -> str:
    """sha256 (first 16 hex digits) of every parameter's bytes, in order: equal digests, equal
    parameters. Buffers are left out: under DDP each process's BatchNorm running statistics see
    only its own last batch (rank 0's are the ones saved)."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def log_alphas(writer, model: nn.Module, step: int) -> None:
    """Every quantized layer's α as ``alpha/weight/<layer>`` and ``alpha/act/<layer>`` at ``step`` (per-channel
    weight α: their mean, as :func:`apot_utils.fakequant.layers.alphas` reports it)."""
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


def train_one_epoch(model: nn.Module, batches, optimizer, *, teacher: nn.Module | None = None, steps: int | None = None,
                    device="cpu", freeze_bn: bool = False, recipe: Recipe | None = None, epoch: int = 0, step0: int = 0,
                    writer=None, log_every: int = 20, progress: bool = False,
                    alphas_of: nn.Module | None = None) -> dict[str, float]:
    """One pass over ``batches`` ((images [B, ...], labels [B]) pairs) with ``optimizer`` (e.g. SGD over
    :func:`parameter_groups`). Returns the epoch's means: loss, acc1 and acc5 (%), and its seconds.

    teacher: a model in eval mode whose predictions the loss follows (:func:`distillation_loss`); None: cross-entropy
    with the labels. steps: stop after that many batches (None: all). device: where the batches go. freeze_bn:
    BatchNorm layers stay in eval mode (running statistics fixed). recipe: its warm-up scales every group's lr by
    :func:`warmup_lr` / lr during its first steps. epoch, step0: the epoch's number and the global step it starts
    at (for messages and logs). writer: a TensorBoard SummaryWriter that gets the training scalars and every α each
    ``log_every`` steps. progress: a tqdm bar. alphas_of: the module whose α are checked and logged (default
    ``model``; the unwrapped model under DistributedDataParallel). Stops with FloatingPointError at the step where
    the loss or an α stops being finite (α: positive)."""
    from tqdm.auto import tqdm

    alphas_of = model if alphas_of is None else alphas_of
    if steps is None:
        steps = len(batches) if hasattr(batches, "__len__") else None
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
        check_thresholds(alphas_of, epoch, step0 + i + 1)
        with torch.no_grad():
            _, correct = ranked_correct(output, labels)
        n = labels.numel()
        loss_m.update(loss.item(), n)
        top1_m.update(100.0 * correct[:, 0].float().mean().item(), n)
        top5_m.update(100.0 * correct.any(1).float().mean().item(), n)
        step = step0 + i + 1
        if writer is not None and (step % log_every == 0 or i + 1 == steps):
            writer.add_scalar("loss_train", loss_m.val, step)
            writer.add_scalar("acc1_train", top1_m.val, step)
            writer.add_scalar("acc5_train", top5_m.val, step)
            writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step)
            log_alphas(writer, alphas_of, step)
        bar.update()
        bar.set_postfix(loss=f"{loss_m.avg:.3f}", acc1=f"{top1_m.avg:.1f}")
    bar.close()
    return {"loss": loss_m.avg, "acc1": top1_m.avg, "acc5": top5_m.avg, "seconds": time.perf_counter() - start}


def check_thresholds(model: nn.Module, epoch: int, step: int) -> None:
    """Stop at the step where a clipping threshold stops being a finite positive number (an α learning rate
    too high for the run: SGD can push α below zero, where the quantizer means nothing)."""
    for name, layer in quantized_layers(model):
        for kind, group in (("act_alpha", "act_alpha_lr (--act-alpha-lr)"), ("weight_alpha", "weight_alpha_lr (--weight-alpha-lr)")):
            alpha = getattr(layer, kind)
            if not bool((torch.isfinite(alpha) & (alpha > 0)).all()):
                raise FloatingPointError(
                    f"{kind} of layer {name} became {alpha.detach().flatten()[:3].tolist()} at epoch {epoch}, step {step}: "
                    f"a clipping threshold must stay positive; lower {group} (the recipe's is meant for 300 epochs, a "
                    "short fine-tune from calibrated α needs far less); any checkpoint of the run is from before it")


def check_finite_parameters(model: nn.Module, epoch: int, kept: str) -> None:
    """Refuse to go on with a model with NaN or infinite values (the run diverged); ``kept`` says which
    checkpoint is still good."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise FloatingPointError(f"after epoch {epoch} the model holds NaN or infinite values ({', '.join(bad[:3])}): "
                                 f"the run diverged (try a lower --lr); {kept}")
