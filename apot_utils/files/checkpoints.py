"""Checkpoints: the authors' released files, and this project's own.

Everything is read with ``torch.load(..., weights_only=True)``: a file that needs arbitrary
code to unpickle is refused. A checkpoint is checked completely (keys, shapes, the bitwidth
it was made for) before anything is copied into a model, so a failure leaves the model as
it was.

Formats understood:
- the release's CIFAR-10 files: ``{'epoch', 'state_dict', 'best_prec', 'optimizer'}`` with
  ``module.`` prefixes and ``<layer>.weight_quant.wgt_alpha``;
- the release's ImageNet layout: ``module.`` prefixes, ``<layer>.weight_alpha``, either as its
  ``main.py`` saves a run (``{'epoch', 'arch', 'state_dict', 'best_acc1', 'optimizer'}``) or as the files it
  hands out for progressive initialization, which its ``--pretrained`` reads as ``checkpoint['model']``;
  its full-precision layers carry ``act_alpha`` = 6.0 and ``weight_alpha`` = 3.0, never used;
- a plain state dict, or ``{'state_dict': ..., 'meta': {'dataset', 'arch', 'bit', ...}}``
  (``meta``, when present, is checked against the requested model).
"""
from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import write_atomically
from .downloads import download_verified, git_blob_of, sha256_of
from .errors import CheckpointError, DownloadError
from .paths import checkpoint_cache, reference_dir, why_not


_RELEASE_URL = "https://github.com/yhhhli/APoT_Quantization/raw/master/CIFAR10/result/res20_{bit}bit/model_best.pth.tar"


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One of the authors' released files: where it is and how it is verified, by ``sha256`` where this project
    has the file, else by its git object id (``git_blob``, public in the authors' repository even where the file's
    size and sha256 are not known here)."""
    dataset: str
    arch: str
    bit: int
    filename: str
    sha256: str | None
    url: str
    published_accuracy: float   # the release's figure (%), CIFAR-10 test set: best_prec in the file, or its README's
    git_blob: str | None = None

    def verifies(self, path: Path) -> bool:
        """Whether the file at ``path`` is this checkpoint (its sha256, else its git object id)."""
        return sha256_of(path) == self.sha256 if self.sha256 else git_blob_of(path) == self.git_blob


IMAGENET_CHECKPOINTS = "https://drive.google.com/open?id=1iIZ1tsaFLSuaujPbnyLutxDZuG31i5kD"   # linked from the authors' README

RELEASED = {
    (c.dataset, c.arch, c.bit): c for c in [
        ReleasedCheckpoint("cifar10", "resnet20", bit, f"res20_{bit}bit.pth.tar", sha, _RELEASE_URL.format(bit=bit), acc)
        for bit, sha, acc in [
            (2, "d2dc978da7dc93cb6e90edc59035ac181921aef9d93598f884d325986a3e7cd2", 90.96),
            (3, "e7864989697c13ed8bfa304ca08bbe6ca3d759f71d4734fe3f3387f7d110a004", 92.51),
            (4, "4db821849e375e3c31d12c6c03563e164ddd34f8da45e0d57bee87eb1d3b4303", 92.47),
            (32, "f2d107bcd63ce2fcfb9b6f43f367dc80003e395b378111fedc7f9244fd90bfc6", 92.96),
        ]
    ]
}
# The authors' ResNet-56 files (CIFAR10/result/res56_{bit}bit/model_best.pth.tar): git object ids from their repository,
# accuracies from their README's table (not copied to the reference data, so no sha256 here).
_RES56_URL = _RELEASE_URL.replace("res20_", "res56_")
RELEASED.update({("cifar10", "resnet56", bit): ReleasedCheckpoint(
    "cifar10", "resnet56", bit, f"res56_{bit}bit.pth.tar", None, _RES56_URL.format(bit=bit), acc, blob)
    for bit, blob, acc in [(2, "4cbe5c56bcbf7474472f5fd42ffa24b2e1373592", 93.05),
                           (3, "9445b8507fa3497e23104590898e9ab8a825d4a3", 93.77),
                           (4, "fb1846c1e308836f7f192314dc60c619f618e060", 93.93),
                           (32, "b8452a84de48ba5fe247c9c4b84b4415252aea84", 94.46)]})
_RELEASED_BY_SHA = {c.sha256: c for c in RELEASED.values() if c.sha256}


def release_path(dataset: str, arch: str, bit: int, download: bool = True) -> Path:
    """Local path of a released checkpoint, verified by sha256.

    Looks in ``$APOT_DATA_DIR/checkpoints/<dataset>/``, then ``data/checkpoints/``; otherwise
    downloads the public file into ``data/checkpoints/`` (atomically, checked first).
    """
    key = (dataset, arch, bit)
    if key not in RELEASED:
        known = ", ".join(f"{d} {a} {b}-bit" for d, a, b in RELEASED)
        hint = (f"; their ImageNet checkpoints are on Google Drive ({IMAGENET_CHECKPOINTS}): download one by hand "
                "and pass --checkpoint PATH") if dataset == "imagenet" else (
            "; this project trained CIFAR-10 MobileNetV2s: pass --checkpoint checkpoints/mobilenet_v2/<file>.pth.tar"
            if arch == "mobilenet_v2" else "")
        raise CheckpointError(f"the authors released no {arch} {bit}-bit {dataset} checkpoint in their repository "
                              f"(there: {known}){hint}")
    entry = RELEASED[key]
    candidates = [checkpoint_cache() / entry.filename]
    if reference_dir() is not None:
        candidates.insert(0, reference_dir() / "checkpoints" / dataset / entry.filename)
    for path in candidates:
        if path.is_file():
            if not entry.verifies(path):
                what = f"sha256 {entry.sha256}" if entry.sha256 else f"git object id {entry.git_blob}"
                raise CheckpointError(f"{path} does not match the released file's {what}")
            return path
    if not download:
        raise CheckpointError(f"{entry.filename} not found in {', '.join(map(str, candidates))}")
    try:
        return download_verified(entry.url, checkpoint_cache() / entry.filename, entry.sha256, entry.git_blob)
    except DownloadError as error:
        if reference_dir() is None:
            raise DownloadError(f"{error}; offline, set APOT_DATA_DIR to a copy of the reference data, or give the "
                                "file's path (checkpoint=PATH; --checkpoint PATH)", error.url, error.reason) from None
        raise DownloadError(f"{candidates[0]} does not exist (APOT_DATA_DIR is {reference_dir()}, which lacks it) "
                            f"and {error.url} could not be downloaded ({error.reason})", error.url, error.reason) from None


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)`` with clear errors for bad files."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {why_not(path)}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy or download?")
    with open(path, "rb") as f:
        head = f.read(2)
    if head not in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip nor a pickle); "
                              "only trusted checkpoints in the documented formats are loaded")
    if head == b"PK":
        _check_zip_members(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        needed = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" (it needs {needed.group(1)})" if needed else ""
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain containers{what} and was "
                              "refused; only trusted checkpoints in the documented formats are loaded") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, RecursionError) as error:
        reason = (str(error).splitlines() or [''])[0] or type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt): {reason}") from None
    if isinstance(content, dict) and "state_dict" not in content and isinstance(content.get("model"), dict):
        content = {("state_dict" if k == "model" else k): v for k, v in content.items()}   # the release's ImageNet init files
    if isinstance(content, dict) and "state_dict" not in content and all(
            isinstance(v, torch.Tensor) for v in content.values()):
        content = {"state_dict": content}
    if not isinstance(content, dict) or not isinstance(content.get("state_dict"), dict):
        raise CheckpointError(f"{path} holds no state_dict")
    released = _RELEASED_BY_SHA.get(sha256_of(path))
    if released is not None:
        content.setdefault("meta", {"dataset": released.dataset, "arch": released.arch, "bit": released.bit})
    if "meta" in content:
        check_meta(content["meta"], path)
    return content


def _check_zip_members(path: Path) -> None:
    """Every member of a torch zip checkpoint against its CRC-32 (``torch.load`` never checks them: flipped
    bytes inside a tensor load silently as other numbers); a member saved without one (CRC 0, torch's
    ``set_crc32_options(False)``) is taken as it is."""
    damaged = None
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size:      # torch.serialization.set_crc32_options(False): none written
                    continue
                try:
                    with archive.open(info) as member:     # reading to the end checks the CRC
                        while member.read(1 << 20):
                            pass
                except zipfile.BadZipFile:
                    damaged = info.filename
                    break
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt): {error}") from None
    if damaged is not None:
        raise CheckpointError(f"{path} is damaged: its member {damaged} fails its CRC check (changed bytes: bit rot "
                              "or a broken copy); use an intact copy of the file")


# The metadata fields a checkpoint of this project records, and the types each must have.
_META_TYPES = {"dataset": (str,), "arch": (str,), "bit": (int,), "scheme": (str,), "terms": (int, type(None)),
               "per_channel": (bool,), "weight_norm": (str,), "level_rule": (str,), "epoch": (int,), "best_acc1": (float, int),
               "recipe": (dict,), "post_training": (dict,), "source": (str,), "source_sha256": (str,)}


def check_meta(meta, path) -> None:
    """Raise :class:`CheckpointError` unless ``meta`` is a dict whose known fields have their types (bool is
    not an int here) and ``epoch`` is not negative."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its meta is a {type(meta).__name__}, not a dict of fields")
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if key in meta and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise CheckpointError(f"{path}: its meta field {key!r} is {value!r} ({type(value).__name__}); expected "
                                  + " or ".join("None" if t is type(None) else t.__name__ for t in types))
    if meta.get("epoch", 0) < 0:
        raise CheckpointError(f"{path}: its meta field 'epoch' is {meta['epoch']}; an epoch count is not negative")


def to_model_keys(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Release key names -> this project's: drop ``module.``, ``weight_quant.wgt_alpha`` -> ``weight_alpha``.
    Two keys that become one (``module.fc.weight`` beside ``fc.weight``) are refused: which to keep is a guess."""
    out, origin = {}, {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: its state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        renamed = key.removeprefix("module.").replace("weight_quant.wgt_alpha", "weight_alpha")
        if renamed in out:
            raise CheckpointError(f"{source}: its state_dict holds both {origin[renamed]!r} and {key!r}, which name the same "
                                  f"tensor {renamed!r}: which one the model should get cannot be told")
        out[renamed], origin[renamed] = value, key
    return out


# The release's QuantConv2d creates both thresholds at every bitwidth; at 32 bits its forward never reads
# them and they keep their initial values.
_RELEASE_UNUSED_ALPHAS = {"act_alpha": 6.0, "weight_alpha": 3.0}


def without_unused_alphas(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full-precision state dict less the release's never-used thresholds: every ``act_alpha`` /
    ``weight_alpha`` that the model lacks, provided each still holds the release's initial value (a trained
    threshold means a quantized checkpoint, which :func:`check_state_dict` then refuses)."""
    expected = model.state_dict()
    extra = {k for k in state_dict if k not in expected and k.rsplit(".", 1)[-1] in _RELEASE_UNUSED_ALPHAS}
    if not extra or any(state_dict[k].numel() != 1 or float(state_dict[k]) != _RELEASE_UNUSED_ALPHAS[k.rsplit(".", 1)[-1]]
                        for k in extra):
        return state_dict
    return {k: v for k, v in state_dict.items() if k not in extra}


def has_trained_alphas(path: str | Path) -> bool:
    """Whether the checkpoint at ``path`` holds clipping thresholds that something set: a quantized model's
    (the release's full-precision files carry ``act_alpha`` 6.0 and ``weight_alpha`` 3.0, never used)."""
    state = to_model_keys(read_checkpoint(path)["state_dict"], str(path))
    return any(key.rsplit(".", 1)[-1] in _RELEASE_UNUSED_ALPHAS
               and not (value.numel() == 1 and float(value) == _RELEASE_UNUSED_ALPHAS[key.rsplit(".", 1)[-1]])
               for key, value in state.items())


def check_finite(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first floating-point tensor with a NaN or an infinity."""
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: {key} holds NaN or infinite values (the checkpoint of a run that diverged?)")


def check_batchnorm_variances(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first BatchNorm running variance with a negative value
    (its square root would be NaN); 0 is allowed (a channel that never varied: eps keeps it finite)."""
    for key, value in state_dict.items():
        if key.endswith("running_var") and value.is_floating_point() and bool((value < 0).any()):
            raise CheckpointError(f"{source}: {key} holds negative values ({float(value.min()):.3g}); a variance "
                                  "is never negative")


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` fits ``model`` exactly (keys and shapes)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        hint = ""
        if any(k.endswith("alpha") for k in missing) and not any(k.endswith("alpha") for k in state_dict):
            hint = " (it has no clipping thresholds: a full-precision checkpoint? use bit 32)"
        elif any(k.endswith("alpha") for k in unexpected) and not any(k.endswith("alpha") for k in expected):
            hint = " (it has clipping thresholds: a quantized checkpoint, but the model is full precision)"
        raise CheckpointError(f"{source} does not fit the model{hint}: missing {missing[:4]}"
                              f"{'…' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                              f"{'…' if len(unexpected) > 4 else ''}")
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if state_dict[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{source} has other shapes than the model (another architecture?): {wrong[:3]}")


def check_alphas(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first clipping threshold that is not a finite positive number."""
    for key, value in state_dict.items():
        if key.endswith("alpha") and not bool((torch.isfinite(value) & (value > 0)).all()):
            layer, kind = key.rsplit(".", 1)
            raise CheckpointError(f"{source}: {kind} of layer {layer} is {value.tolist()}; a clipping threshold "
                                  "must be a finite positive number")


def save_checkpoint(content: dict, path: str | Path) -> Path:
    """Write ``content`` (``state_dict``, ``meta`` and whatever else) to ``path`` atomically
    (:func:`write_atomically`)."""
    return write_atomically(path, lambda f: torch.save(content, f))


def checkpoint_meta(path: str | Path) -> dict:
    """The ``meta`` of a checkpoint (dataset, arch, bit, scheme, ...), empty when it has none."""
    return dict(read_checkpoint(path).get("meta", {}))
