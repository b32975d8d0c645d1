"""``python -m apot_utils fetch``: the reference data layout that ``APOT_DATA_DIR`` points at, built from
the public sources (online) or from local files (``--from DIR``).

What it makes, under ``dest`` (default ``data/reference``):
- ``checkpoints/cifar10/res20_{2,3,4,32}bit.pth.tar``: the authors' released ResNet-20 models;
- ``logs/imagenet/res{18,34}_{2,3,4,5}bit.tfevents``: the authors' ImageNet TensorBoard logs;
- ``cifar10/test_first{100,1000}_lossless.npz``: the first 100 / 1,000 official CIFAR-10 test images,
  exact (online: cut from the official test set, which torchvision downloads and checks).
Every file is checked against its sha256 (the images: a digest of their pixels and labels) and
appears under its name only once checked; an interrupted download resumes where it stopped.

Not public, so never downloaded: the JPEG copy of CIFAR-10 that chapters 03 (its JPEG section), 04 and 05 calibrate, train and test on
on, and ``reference/imagenet_resnet18_release_keys.json`` (:data:`LOCAL_ONLY`); with ``--from`` they are
copied (checked) when the source folder has them.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import write_atomically
from .checkpoints import RELEASED
from .downloads import download_verified, sha256_of
from .errors import CheckpointError, DownloadError
from .data import load_npz, load_torchvision
from .paths import fetch_dest
_REPO = "https://github.com/yhhhli/APoT_Quantization/raw/master"


@dataclass(frozen=True)
class PublicFile:
    relative: str       # path in the layout
    url: str
    sha256: str


_LOGS = {   # (arch, bit): (file name in the authors' repository, sha256)
    ("res18", 2): ("events.out.tfevents.1589728147.SH-IDC1-10-5-31-1", "dcdb263bbf551daa96cea116dd3c5009b2cb4a179cc524ffa922183e236cc29a"),
    ("res18", 3): ("events.out.tfevents.1589587810.SH-IDC1-10-5-31-11", "8ed021dab985a62408b19e7d51f4edaa376a3dfd089e1e98c5621e8bf29e17b1"),
    ("res18", 4): ("events.out.tfevents.1589587785.SH-IDC1-10-5-31-5", "3f800b2f390962afc73a72c6ad4b379b3729c2b5bf9c4bed8e1275b3fe58a9ab"),
    ("res18", 5): ("events.out.tfevents.1589591459.SH-IDC1-10-5-31-2", "b082d487cfb167f089a9fc2c622cf378f37e60fd96c2390748cf1469760f1ac9"),
    ("res34", 2): ("events.out.tfevents.1589728103.SH-IDC1-10-5-31-23", "4d3b4d4669720dded2f57acd4d5e20c57418ae8be808998738e7db7b55d1c3aa"),
    ("res34", 3): ("events.out.tfevents.1589685640.SH-IDC1-10-5-31-6", "9347b22378b3b53cfa98505f893e1b8d56947f8202e635ca52c2f1b079855af5"),
    ("res34", 4): ("events.out.tfevents.1589610203.SH-IDC1-10-5-31-1", "ca7e5803f814c6e137bb7ee1e95f4d75ecc79f866c2fe0cbfb3f6caacd9ea095"),
    ("res34", 5): ("events.out.tfevents.1589501548.SH-IDC1-10-5-31-12", "eaf125452fbf03456497318f11f0c8ea174652de04d154dd4ddd99b9d40169b3"),
}

PUBLIC_FILES = (
    [PublicFile(f"checkpoints/{c.dataset}/{c.filename}", c.url, c.sha256) for c in RELEASED.values() if c.sha256]
    + [PublicFile(f"logs/imagenet/{arch}_{bit}bit.tfevents", f"{_REPO}/ImageNet/events/{arch}/{bit}bit/{name}", sha)
       for (arch, bit), (name, sha) in _LOGS.items()]
)

LOCAL_ONLY = {   # relative path: sha256
    "cifar10/jpeg_files.zip": "05b4c8c8bf43c21250b5d4abc4621c4fed6837d691555b00c9215bfc6b363d11",
    "cifar10/test_jpeg.npz": "2dc403fb86e4d8af35f7bb62a7a0de9b625816524edb0f89c2e790811964a251",
    "reference/imagenet_resnet18_release_keys.json": "a8dda92248a137628900883bd8e6fb76055439683502883e039a0fc61cf3351f",
}

# sha256 of x.tobytes() + y.tobytes() (x uint8 [N, 32, 32, 3], y int64 [N]) of the first N official test images
EXACT_TEST_DIGESTS = {100: "50fb7302833c66eaef94d53895300712a57ce75fb93bff3209a300e55160dfd2",
                      1000: "970081de537b57c64040520c751d650e64731341be62dd0e3209bd2235bead47"}


def images_digest(path: Path) -> str | None:
    """sha256 of the pixels and labels of an image file (:data:`EXACT_TEST_DIGESTS`), or None when it is not a
    readable CIFAR-10 .npz (truncated, not an archive, other arrays)."""
    try:
        images = load_npz(path)
    except (ValueError, OSError):
        return None
    return hashlib.sha256(images.x.numpy().tobytes() + images.y.numpy().tobytes()).hexdigest()


def _copy_verified(source: Path, target: Path, check: Callable[[Path], bool], what: str) -> None:
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: --from must be a folder with the reference layout")
    if not check(source):
        raise CheckpointError(f"{source} is not the expected {what} (checksum differs): nothing copied")
    with open(source, "rb") as f:
        write_atomically(target, lambda out: shutil.copyfileobj(f, out))


def _exact_test_images(dest: Path, source: Path | None, log: Callable[[str], None]) -> None:
    for count, digest in EXACT_TEST_DIGESTS.items():
        relative = f"cifar10/test_first{count}_lossless.npz"
        target = dest / relative
        if target.is_file():
            if images_digest(target) == digest:
                log(f"ok      {relative}")
                continue
            log(f"damaged {relative} (not the expected images): replacing it")
        if source is not None:
            _copy_verified(source / relative, target, lambda p: images_digest(p) == digest, "CIFAR-10 test images")
        else:
            test = load_torchvision(train=False, root=dest / "cifar10" / "torchvision")
            x, y = test.x[:count].numpy().astype(np.uint8), test.y[:count].numpy().astype(np.int64)
            if hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest() != digest:
                raise CheckpointError(f"the first {count} CIFAR-10 test images from torchvision do not match the reference")
            write_atomically(target, lambda out: np.savez(out, x=x, y=y))
        log(f"wrote   {relative}")


def fetch(dest: str | Path | None = None, source: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Build the reference layout under ``dest`` (default :func:`~apot_utils.files.paths.fetch_dest`, the data
    root's ``reference/``; module docstring): from ``source``, a folder with the same layout, when given; else from
    the public URLs. Files already present and correct are kept. Returns ``dest``."""
    dest = fetch_dest() if dest is None else Path(dest)
    source = None if source is None else Path(source)
    for item in PUBLIC_FILES:
        target = dest / item.relative
        if target.is_file() and sha256_of(target) == item.sha256:
            log(f"ok      {item.relative}")
            continue
        if source is not None:
            _copy_verified(source / item.relative, target, lambda p: sha256_of(p) == item.sha256, item.relative)
        else:
            try:
                download_verified(item.url, target, item.sha256)
            except DownloadError as error:
                raise DownloadError(f"{error}; offline, build the layout from a copy: fetch --from FOLDER "
                                    "(source=FOLDER)", error.url, error.reason) from None
        log(f"wrote   {item.relative}")
    _exact_test_images(dest, source, log)
    for relative, sha in LOCAL_ONLY.items():
        target = dest / relative
        if target.is_file() and sha256_of(target) == sha:
            log(f"ok      {relative}")
        elif source is not None and (source / relative).is_file():
            _copy_verified(source / relative, target, lambda p: sha256_of(p) == sha, relative)
            log(f"wrote   {relative}")
        else:
            log(f"missing {relative} (not public: only in a copy of the reference data; chapters 03, 04 and 05 need it)")
    log(f"=> done: export APOT_DATA_DIR={dest.resolve()}")
    return dest
