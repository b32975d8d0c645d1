"""ImageNet (or any ImageFolder) as the release read it: training and validation transforms and loaders, a
process's shard, images decoded so that a bad file is named, and a synthetic folder for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import sample_indices
from .paths import why_not

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnreadableImage(ValueError):
    """An image file that cannot be decoded, named in the message. Raised inside a DataLoader worker, it
    reaches the main process rebuilt from the worker's traceback text; it keeps only its own line."""

    def __init__(self, message: str):
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].removeprefix(f"{__name__}.UnreadableImage: ")
        super().__init__(message)


def _open_image(path: str):
    """Decode one image file as RGB (every pixel read now, so a truncated file fails here, named)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = "not an image, or empty" if isinstance(error, UnidentifiedImageError) else str(error)
        raise UnreadableImage(f"{path} is not a readable image ({reason})") from None


def image_folder(root: str | Path, transform, what: str, num_classes: int = 1000):
    """``torchvision.datasets.ImageFolder`` of ``root`` (``<root>/<class>/<image>``) whose class folders
    must number ``num_classes`` (the model's outputs, in sorted folder order); images decoded by
    :func:`_open_image`. ``what`` names the folder in errors ('ImageNet validation')."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder: {why_not(root, 'folder')} (expected <root>/<class>/<image>)")
    try:
        dataset = ImageFolder(str(root), transform, loader=_open_image)
    except FileNotFoundError as error:   # no class folders, or class folders without images
        raise FileNotFoundError(f"{what} folder {root}: {str(error).splitlines()[0]}") from None
    if len(dataset.classes) != num_classes:
        shown = ", ".join(dataset.classes[:5]) + (", ..." if len(dataset.classes) > 5 else "")
        raise ValueError(f"{what} folder {root} has {len(dataset.classes)} class folders ({shown}); the model has "
                         f"{num_classes} classes, one folder each (pass the folder whose subfolders are the classes)")
    return dataset


def imagenet_train_loader(root: str | Path, batch_size: int, workers: int = 4, rank: int = 0, world: int = 1,
                          seed: int = 0, subset: int | None = None, num_classes: int = 1000):
    """ImageNet training ImageFolder as the release read it: Resize((256, 256)), RandomCrop(224),
    horizontal flip, normalize; ``batch_size`` per process, a DistributedSampler across ``world``
    processes (call ``loader.sampler.set_epoch(epoch)`` each epoch). subset: N images drawn by a
    seeded shuffle (:meth:`ImageArrays.sample`'s draw)."""
    import torchvision.transforms as T
    from torch.utils.data.distributed import DistributedSampler

    transform = T.Compose([T.Resize((256, 256)), T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = image_folder(root, transform, "ImageNet training", num_classes)
    if subset is not None:
        dataset = torch.utils.data.Subset(dataset, sample_indices(len(dataset), subset, seed).tolist())
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), drop_last=True)


def imagenet_val_set(root: str | Path, limit: int | None = None, num_classes: int = 1000):
    """ImageNet-style validation ImageFolder: Resize(256), CenterCrop(224), normalize. limit: the first N
    images (in the folder's sorted order)."""
    import torchvision.transforms as T

    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = image_folder(root, transform, "ImageNet validation", num_classes)
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    return dataset


def shard(dataset, rank: int = 0, world: int = 1):
    """Every ``world``-th item of ``dataset`` from ``rank`` (a process's share of a validation set; the shards
    of all ranks cover it once)."""
    return dataset if world == 1 else torch.utils.data.Subset(dataset, range(rank, len(dataset), world))


def val_loader(dataset, batch_size: int = 256, workers: int = 4):
    """Batches of ``dataset`` in order (no shuffle), as the release validated."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       pin_memory=torch.cuda.is_available())


def imagenet_val_loader(root: str | Path, batch_size: int = 256, workers: int = 4, limit: int | None = None,
                        num_classes: int = 1000):
    """:func:`val_loader` of :func:`imagenet_val_set`."""
    return val_loader(imagenet_val_set(root, limit, num_classes), batch_size, workers)


def make_synthetic_imagefolder(root: str | Path, classes: int = 1000, per_class: int = 1, size: int = 32,
                               seed: int = 0) -> Path:
    """A small ImageFolder of random-noise JPEGs (``root/class_kkk/img_i.jpg``, ImageNet's 1,000 classes by
    default) that exercises the ImageNet code path without ImageNet. Its accuracy means nothing."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for k in range(classes):
        folder = root / f"class_{k:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i}.jpg", quality=90)
    return root
