"""CIFAR-10 as uint8 arrays (torchvision download, an ``.npz`` mirror, or the JPEG ImageFolder zip), where the
reference data lives, and the normalization with the authors' constants. Batching is
:mod:`apot_utils.files.batching`'s; ImageNet's folders :mod:`apot_utils.files.imagenet`'s.

Images stay uint8 [N, 32, 32, 3] until a batch is formed; ``normalize`` turns a uint8 batch
[B, 32, 32, 3] into float32 [B, 3, 32, 32] exactly as ``ToTensor`` + ``Normalize`` do.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.checks import check_count
from .paths import data_root, reference_dir, why_not

CIFAR10_MEAN = (0.491, 0.482, 0.447)
CIFAR10_STD = (0.247, 0.243, 0.262)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class ImageArrays:
    """x: uint8 [N, H, W, 3]; y: int64 [N]; source: where it came from, said in every log."""
    x: torch.Tensor
    y: torch.Tensor
    source: str

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int) -> "ImageArrays":
        return ImageArrays(self.x[:n], self.y[:n], f"{self.source}, first {n}")

    def sample(self, n: int, seed: int = 0) -> "ImageArrays":
        """n images drawn without replacement by a seeded shuffle (in their original order), so that
        a small training subset of a class-sorted file still holds every class."""
        idx = sample_indices(len(self), n, seed)
        return ImageArrays(self.x[idx], self.y[idx], f"{self.source}, {len(idx)} sampled (seed {seed})")

    def to(self, device) -> "ImageArrays":
        return ImageArrays(self.x.to(device), self.y.to(device), self.source)


def load_npz(path: str | Path, num_classes: int = 10) -> ImageArrays:
    """An offline mirror: ``x`` uint8 [N, 32, 32, 3] (HWC, RGB), ``y`` integer labels [N] in 0..num_classes-1.

    Anything else is refused with a ValueError that names the file and what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"CIFAR-10 file {path} is a directory, not an .npz file")
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file: {why_not(path)}")
    try:
        if zipfile.is_zipfile(path):
            _check_declared_sizes(path)
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} is a single array (.npy), not an .npz file with arrays 'x' and 'y'")
        with f:
            if "x" not in f or "y" not in f:
                raise ValueError(f"{path} must hold arrays 'x' (uint8 [N,32,32,3]) and 'y' [N]")
            x, y = f["x"], f["y"]
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path} is not an .npz file of arrays ({str(error).splitlines()[0][:80]}); "
                         "only .npz files of plain arrays are read") from None
    except ValueError as error:
        if str(path) in str(error):
            raise
        raise ValueError(f"{path} holds objects, not plain arrays, and was not read; only .npz files of plain "
                         "arrays are read") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{path}: x must be uint8 [N,32,32,3] and y [N], got x {x.dtype} {x.shape}, y {y.shape}")
    if len(y) == 0:
        raise ValueError(f"{path} holds no images")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got {y.dtype} (e.g. {y[:3].tolist()})")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(f"{path}: labels must be 0..{num_classes - 1}; {int(bad.sum())} are not, e.g. "
                         f"{sorted(set(y[bad].tolist()))[:5]}")
    return ImageArrays(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), display_path(path))


def _check_declared_sizes(path: Path) -> None:
    """Each ``.npy`` member's header (shape and dtype) against the size the zip's directory gives it, before any
    array is allocated: a small file that declares 300,000 images is refused instead of allocating for them."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                except Exception as error:      # numpy parses the header with ast: SyntaxError, TokenError, ...
                    raise ValueError(f"{path}: member {info.filename} has no readable array header "
                                     f"({str(error).splitlines()[0][:80]})") from None
                declared = member.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if not dtype.hasobject and declared != info.file_size:     # objects: refused by np.load below
                raise ValueError(f"{path}: member {info.filename} declares shape {shape} ({declared:,} bytes) but "
                                 f"holds {info.file_size:,} bytes: a damaged or forged file")


def display_path(path: str | Path) -> str:
    """``path`` with the reference-data folder written as ``$APOT_DATA_DIR``."""
    root = reference_dir()
    if root is not None and Path(path).resolve().is_relative_to(root.resolve()):
        return "$APOT_DATA_DIR/" + str(Path(path).resolve().relative_to(root.resolve()))
    return str(path)


def reference_file(relative: str) -> Path:
    """A file of the reference data copy (``$APOT_DATA_DIR/<relative>``), or a clear error."""
    root = reference_dir()
    if root is None:
        raise FileNotFoundError(f"{relative} not found: set APOT_DATA_DIR to the folder of the reference data copy")
    if not (root / relative).is_file():
        raise FileNotFoundError(f"{root / relative} does not exist: APOT_DATA_DIR ({root}) lacks {relative} "
                                f"(python -m apot_utils fetch --dest {root} builds the layout)")
    return root / relative


class DownloadFailed(FileNotFoundError):
    """CIFAR-10 could not be downloaded through torchvision; ``cause`` says why in words."""

    def __init__(self, cause: str):
        self.cause = cause
        hint = ("pass --data with one of the CIFAR-10 files under APOT_DATA_DIR" if reference_dir() else
                "offline, set APOT_DATA_DIR to a copy of the reference data or pass --data PATH.npz|PATH.zip")
        super().__init__(f"CIFAR-10 could not be downloaded through torchvision ({cause}); {hint}")


def download_cause(error: BaseException) -> str:
    """Why a download failed, in words: 'no network (...)' when no server could be reached, the server's answer
    when one came, else the error itself."""
    import urllib.error

    import socket

    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    reason = getattr(error, "reason", error) if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, (ConnectionError, TimeoutError, socket.gaierror, socket.timeout)) or (
            isinstance(error, urllib.error.URLError) and not isinstance(reason, (PermissionError, FileNotFoundError))):
        return f"no network: {reason}"
    return f"{type(reason).__name__}: {str(reason).splitlines()[0] if str(reason) else ''}"


def load_torchvision(train: bool, root: Path | None = None) -> ImageArrays:
    """The official CIFAR-10 through torchvision, kept in ``root`` (default: the data root, :func:`data_root`),
    downloaded there when online."""
    root = data_root() if root is None else root
    import urllib.error

    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(root=str(root), train=train, download=True)
    except (urllib.error.URLError, OSError) as error:
        raise DownloadFailed(download_cause(error)) from None
    return ImageArrays(torch.from_numpy(ds.data), torch.tensor(ds.targets, dtype=torch.int64),
                       f"torchvision CIFAR-10 {'train' if train else 'test'} set")


def sample_indices(n_total: int, n: int, seed: int) -> torch.Tensor:
    """n of n_total indices drawn without replacement by a seeded shuffle, in ascending order."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def load_jpeg_zip(path: str | Path, split: str, sample: int | None = None, seed: int = 0,
                  progress: bool = True) -> ImageArrays:
    """The JPEG copy's ImageFolder zip (``<split>/<class>/NNNN.jpg``), decoded with Pillow.

    Test images come back in the official order within each class; classes in index order.
    sample: decode only that many files, drawn as :meth:`ImageArrays.sample` would draw them.
    """
    from tqdm.auto import tqdm

    xs, ys = [], []
    if Path(path).is_dir():
        raise ValueError(f"{path} is a directory, not the JPEG copy's .zip")
    if not Path(path).is_file():
        raise FileNotFoundError(f"CIFAR-10 file: {why_not(path)}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a zip archive (expected the JPEG copy's <split>/<class>/NNNN.jpg files)")
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith(f"{split}/") and n.endswith(".jpg"))
        if not names:
            raise ValueError(f"{path} has no {split}/<class>/*.jpg files")
        unknown = sorted({n.split("/")[1] for n in names} - set(CIFAR10_CLASSES))
        if unknown:
            raise ValueError(f"{path}: {split}/ has folders that are not CIFAR-10 classes: {unknown[:5]} "
                             f"(the classes: {', '.join(CIFAR10_CLASSES)})")
        if sample is not None:
            names = [names[i] for i in sample_indices(len(names), sample, seed)]
        for name in tqdm(names, desc=f"decoding {split} JPEGs", unit="img", mininterval=2,
                         disable=not progress or len(names) < 5000):
            xs.append(_decode_member(archive, name, path))
            ys.append(CIFAR10_CLASSES.index(name.split("/")[1]))
    what = f"{split}, JPEG copy" + (f", {len(names)} sampled (seed {seed})" if sample is not None else "")
    return ImageArrays(torch.from_numpy(np.stack(xs)), torch.tensor(ys), f"{display_path(path)} ({what})")


MAX_IMAGE_BYTES = 1 << 20         # a CIFAR-10 JPEG member larger than 1 MiB is no CIFAR-10 image


def _decode_member(archive: zipfile.ZipFile, name: str, path) -> np.ndarray:
    """One 32×32 RGB image of the zip, uint8 [32, 32, 3]; a ValueError naming the member otherwise."""
    import zlib

    from PIL import Image, UnidentifiedImageError

    size = archive.getinfo(name).file_size
    if size > MAX_IMAGE_BYTES:          # what it would decompress to, from the zip's directory: checked first
        raise ValueError(f"{path}: member {name} declares {size:,} bytes; a 32×32 CIFAR-10 JPEG is a few kB")
    try:
        raw = archive.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise ValueError(f"{path}: member {name} is damaged ({error})") from None
    try:
        opened = Image.open(io.BytesIO(raw))
        if opened.size != (32, 32):        # from the header: a 60000×60000 one is refused before it is decoded
            raise ValueError(f"{path}: member {name} is {opened.size[0]}×{opened.size[1]} pixels; CIFAR-10 images "
                             "are 32×32")
        image = np.asarray(opened.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        reason = "not an image" if isinstance(error, UnidentifiedImageError) else str(error)
        raise ValueError(f"{path}: member {name} is not a readable image ({reason})") from None
    if image.shape != (32, 32, 3):
        raise ValueError(f"{path}: member {name} is {image.shape[1]}×{image.shape[0]} pixels; CIFAR-10 images are 32×32")
    return image


def load_cifar10(source: str | Path | None = None, train: bool = False, sample: int | None = None,
                 seed: int = 0, progress: bool = True) -> ImageArrays:
    """CIFAR-10 from ``source``: an ``.npz`` path, a JPEG ``.zip`` path, or 'torchvision'.

    With no source: torchvision when it downloads, else from ``$APOT_DATA_DIR/cifar10/`` the exact first 1,000
    test images (``test_first1000_lossless.npz``; the JPEG copy ``test_jpeg.npz`` where those are missing) or
    the training split of the JPEG copy ``jpeg_files.zip``, saying why and which; a clear error when neither is
    there.
    sample: that many images drawn by a seeded shuffle (:meth:`ImageArrays.sample`; from a zip only
    those are decoded).
    """
    check_count("sample", sample)
    if sample is not None and (str(source).endswith(".zip") or (source is None and train and not _torchvision_cached(train))):
        zip_path = Path(source) if source is not None else (reference_dir() / "cifar10" / "jpeg_files.zip" if reference_dir() else None)
        if zip_path is not None and zip_path.is_file():
            return load_jpeg_zip(zip_path, "train" if train else "test", sample, seed, progress)
    arrays = _load_cifar10(source, train, progress)
    return arrays if sample is None else arrays.sample(sample, seed)


def _torchvision_cached(train: bool, root: Path | None = None) -> bool:
    root = data_root() if root is None else root
    return (root / "cifar-10-batches-py" / ("data_batch_1" if train else "test_batch")).is_file()


def _load_cifar10(source, train: bool, progress: bool = True) -> ImageArrays:
    if source is None:
        try:
            return load_torchvision(train)
        except Exception as error:  # offline: the reference data's copy, saying why and which images
            cause = error.cause if isinstance(error, DownloadFailed) else download_cause(error)
            folder = reference_dir() / "cifar10" if reference_dir() else None
            exact = folder / "test_first1000_lossless.npz" if folder else None
            if not train and exact is not None and exact.is_file():
                print(f"=> CIFAR-10 could not be downloaded ({cause}); scoring the exact first 1,000 test images, "
                      f"{display_path(exact)} (all 10,000 as a JPEG copy, about 10 points lower: "
                      f"--data {display_path(folder / 'test_jpeg.npz')})")
                return load_npz(exact)
            mirror = folder / ("jpeg_files.zip" if train else "test_jpeg.npz") if folder else None
            if mirror is None or not mirror.is_file():
                where = (f"APOT_DATA_DIR ({reference_dir()}) holds no CIFAR-10 copy" if reference_dir() else
                         "no offline copy was given: set APOT_DATA_DIR to the reference data")
                raise FileNotFoundError(f"CIFAR-10 could not be downloaded ({cause}) and {where}; or pass "
                                        "--data PATH.npz|PATH.zip") from None
            print(f"=> CIFAR-10 could not be downloaded ({cause}); using {display_path(mirror)} "
                  "(a JPEG copy: accuracies about 10 points below the published ones)")
            return load_jpeg_zip(mirror, "train", progress=progress) if train else load_npz(mirror)
    if str(source) == "torchvision":
        return load_torchvision(train)
    if str(source).endswith(".zip"):
        return load_jpeg_zip(source, "train" if train else "test", progress=progress)
    return load_npz(source)


def normalize(batch: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W], ``(x / 255 - mean) / std``."""
    x = batch.permute(0, 3, 1, 2).float().div(255)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s).contiguous()
