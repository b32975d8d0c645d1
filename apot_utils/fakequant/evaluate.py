"""Where a model runs (:func:`pick_device`) and the validation loop that prints what the release's
``test.py`` / ``main.py`` printed (:func:`validate`)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..files import batching, data
from .layers import alphas, frozen_weights


class AverageMeter:
    """Last value and running average of a per-batch quantity weighted by batch size."""

    def __init__(self):
        self.val = self.sum = self.count = 0.0

    def update(self, val: float, n: int = 1):
        self.val, self.sum, self.count = val, self.sum + val * n, self.count + n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)


@dataclass
class ValidationResult:
    """loss: mean cross-entropy; top1/top5: accuracy in %; predictions/targets: [N] int64 (CPU)."""
    loss: float
    top1: float
    top5: float
    seconds: float
    predictions: torch.Tensor = field(repr=False)
    targets: torch.Tensor = field(repr=False)

    @property
    def images_per_second(self) -> float:
        return len(self.targets) / self.seconds


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cpu', 'cuda', 'cuda:N'. Any other device type, or
    'cuda' without a GPU, is an error.

    On CUDA, TF32 is turned off for convolutions and matrix products: with its 10-bit
    mantissa, activations land on the other side of a level midpoint for several percent of
    the images, where full float32 (what the release's GPUs computed) moves only a few.
    """
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {requested!r}"
                         + (" (this project runs on CPUs and CUDA GPUs only)" if device is not None else ""))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


def reuse_freed_memory() -> bool:
    """Keep the memory this process frees for its next tensors instead of giving it back to the operating
    system (glibc's malloc; elsewhere a no-op). Returns whether both settings took.

    By default glibc unmaps or trims each freed block above an adaptive threshold (128 kB up to 32 MB), so
    the next tensor of that size faults its pages back in one by one, zero-filled. A CIFAR-10 batch of 100
    allocates activation tensors of 1.6 to 6.5 MB at every layer, and on a CPU a forward pass then spends a
    large part of its time in page faults (``benchmarks/results/README.md``). ``M_MMAP_THRESHOLD`` = 32 MB
    and ``M_TRIM_THRESHOLD`` = 2 GiB keep those blocks in the heap for reuse, as the allocators PyTorch's
    CPU tuning guide recommends (jemalloc, tcmalloc) do; the process keeps its peak until it exits. The
    command line calls it once at start.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_trim_threshold, 2**31 - 1)) & bool(mallopt(m_mmap_threshold, 32 * 2**20))


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"=> running on CUDA ({torch.cuda.get_device_name(device)})"
    why = "" if torch.cuda.is_available() else " (CUDA not available)"
    return f"=> running on the CPU{why}"


def print_alphas(model: nn.Module, log: Callable[[str], None] = print) -> None:
    """One ``weight alpha: w, act alpha: a`` line per quantized layer, in module order."""
    for _, w, a in alphas(model):
        log(f"weight alpha: {w:.3f}, act alpha: {a:.3f}")


def summary_line(style: str, top1: float, top5: float) -> str:
    """The release's last validation line: `` * Prec x% `` ('cifar') or `` * Acc@1 x Acc@5 y`` ('imagenet')."""
    return f" * Prec {top1:.3f}% " if style == "cifar" else f" * Acc@1 {top1:.3f} Acc@5 {top5:.3f}"


def ranked_correct(output: torch.Tensor, labels: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k classes of each row of ``output`` [B, classes] (k at most the number of classes), and whether
    each is the label: ([B, k] int64, [B, k] bool). Top-1 is column 0; top-k is any of the row."""
    ranked = output.topk(min(k, output.shape[1]), dim=1).indices
    return ranked, ranked.eq(labels[:, None])


def first_non_finite(model: nn.Module, images: torch.Tensor) -> str:
    """Where ``model`` first computes NaN or infinity on ``images``: 'first in <module name> (<type>)' for the
    first module, in the order they run, whose output is not finite; 'in its input images' when those are
    not finite; 'inside the model' where no module of it shows it (an ONNX Runtime session)."""
    if not bool(torch.isfinite(images).all()):
        return "in its input images"
    found: list[str] = []

    def hook(module, inputs, output, name):
        if not found and isinstance(output, torch.Tensor) and output.is_floating_point() \
                and not bool(torch.isfinite(output).all()):
            found.append(f"first in {name} ({type(module).__name__})")

    handles = [m.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
               for name, m in model.named_modules() if name and not list(m.children())]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else "inside the model"


def check_finite_logits(model: nn.Module, images: torch.Tensor, output: torch.Tensor, what: str = "the model") -> None:
    """Raise FloatingPointError, naming the first layer where it appears (:func:`first_non_finite`), when
    ``output`` (``model``'s logits on ``images``) holds NaN or infinity: an accuracy counted from such logits
    would be a number with no meaning."""
    if not bool(torch.isfinite(output).all()):
        raise FloatingPointError(f"{what} computes logits that are not finite (NaN or infinity), "
                                 f"{first_non_finite(model, images)}; no accuracy is reported")


def check_model_computes(model: nn.Module, image_size: int, what: str = "the model") -> None:
    """:func:`check_finite_logits` on four seeded random images [4, 3, image_size, image_size] (normalized
    scale): a model whose weights make NaN or infinity on any input shows it here. What export and quantize
    run on the model they are about to write, and on the file they wrote."""
    probe = torch.randn(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        check_finite_logits(model, probe, model(probe), what)


def validate(model: nn.Module, batches: Iterable, total: int, device: torch.device,
             style: str = "cifar", print_freq: int = 10, log: Callable[[str], None] = print,
             progress: bool = False) -> ValidationResult:
    """Evaluate ``model`` on (images [B, 3, H, W], labels [B]) batches; ``total`` = number of batches.

    style 'cifar' prints ``Test: [i/N] Time Loss Prec`` and `` * Prec x%``; 'imagenet' prints
    ``Acc@1``/``Acc@5`` as the ImageNet script did. Logits with NaN or infinity stop it with a FloatingPointError
    that names the first layer computing them (:func:`check_finite_logits`), never an accuracy. progress: a tqdm
    bar on stderr (batches done, the time left) beside the log, which it leaves as it is.
    """
    from tqdm.auto import tqdm

    model.eval()
    batch_time, losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter(), AverageMeter()
    predictions, targets = [], []
    start = end = time.perf_counter()
    with frozen_weights(model), torch.inference_mode(), \
            tqdm(total=total, desc="validate", unit="batch", disable=not progress, leave=False) as bar:
        for i, (images, labels) in enumerate(batches):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            output = model(images)
            check_finite_logits(model, images, output)
            loss = F.cross_entropy(output, labels)
            ranked, correct = ranked_correct(output, labels)
            n = labels.numel()
            losses.update(loss.item(), n)
            top1.update(correct[:, 0].float().sum().item() * 100.0 / n, n)
            top5.update(correct.any(dim=1).float().sum().item() * 100.0 / n, n)
            predictions.append(ranked[:, 0].cpu())
            targets.append(labels.cpu())
            batch_time.update(time.perf_counter() - end)
            end = time.perf_counter()
            bar.update()
            if i % print_freq == 0:
                if style == "cifar":
                    log(f"Test: [{i}/{total}]\tTime {batch_time.val:.3f} ({batch_time.avg:.3f})\t"
                        f"Loss {losses.val:.4f} ({losses.avg:.4f})\tPrec {top1.val:.3f}% ({top1.avg:.3f}%)")
                else:
                    log(f"Test: [{i}/{total}]\tTime {batch_time.val:.3f} ({batch_time.avg:.3f})\t"
                        f"Loss {losses.val:.4e} ({losses.avg:.4e})\tAcc@1 {top1.val:6.2f} ({top1.avg:6.2f})\t"
                        f"Acc@5 {top5.val:6.2f} ({top5.avg:6.2f})")
    log(summary_line(style, top1.avg, top5.avg))
    return ValidationResult(losses.avg, top1.avg, top5.avg, time.perf_counter() - start,
                            torch.cat(predictions), torch.cat(targets))


def validate_cifar10(model: nn.Module, test: data.ImageArrays, device, batch_size: int = 100,
                     print_freq: int = 10, log: Callable[[str], None] = print, progress: bool = False) -> ValidationResult:
    """:func:`validate` on CIFAR-10 arrays in batches of ``batch_size`` (the release used 100)."""
    return validate(model, batching.batches(test, batch_size, device=device), batching.num_batches(test, batch_size),
                    device, "cifar", print_freq, log, progress)
