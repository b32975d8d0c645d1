"""Where a training process stands (:class:`Distributed`: rank and world under ``torchrun``) and the images it
trains and validates on (:func:`prepare_data`: CIFAR-10 arrays or ImageNet folders, this process's share)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.distributed as dist

from ..fakequant.training import Recipe
from ..files import batching, data, imagenet


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


@dataclass
class TrainingData:
    """The run's images: ``epoch_batches(epoch)`` yields this process's (images, labels) training batches,
    ``steps`` of them an epoch; ``val_batches()`` this process's shard of the validation images, ``val_total``
    batches, printed in the ``style`` of the release's log; ``val_images`` all of them (every shard);
    ``calib_images`` (normalized, CIFAR-10 from a full-precision init) choose the starting α."""
    epoch_batches: Callable[[int], Iterable]
    steps: int
    val_batches: Callable[[], Iterable]
    val_total: int
    val_images: int
    style: str
    calib_images: torch.Tensor | None = None


def prepare_data(cfg, recipe: Recipe, device, where: Distributed, say) -> TrainingData:
    """The images of the run ``cfg`` (a :class:`~apot_utils.commands.train.TrainConfig`) for this process."""
    per_process = recipe.batch_size // where.world
    if cfg.dataset == "cifar10":
        say("=> loading cifar10 data...")
        # a subset is drawn as ImageArrays.sample draws it; from the JPEG zip only those files are decoded
        train_set = data.load_cifar10(cfg.data_source, train=True, sample=cfg.subset, seed=cfg.seed, progress=cfg.progress)
        test_set = data.load_cifar10(cfg.val_source)
        if cfg.val_subset is not None:
            test_set = test_set.subset(cfg.val_subset)
        if cfg.data_on_device:
            train_set, test_set = train_set.to(device), test_set.to(device)
        shard = torch.arange(where.rank, len(test_set), where.world)

        def epoch_batches(epoch: int):
            order = batching.epoch_order(len(train_set), epoch, cfg.seed, where.rank, where.world)
            generator = torch.Generator(device=train_set.x.device).manual_seed(cfg.seed * 7919 + epoch * 997 + where.rank)
            return batching.batches(train_set, per_process, order, train_augment=True, generator=generator, device=device)

        steps = len(batching.epoch_order(len(train_set), 0, cfg.seed, where.rank, where.world)) // per_process
        result = TrainingData(epoch_batches, steps, lambda: batching.batches(test_set, 100, shard, device=device),
                              (len(shard) + 99) // 100, len(test_set), "cifar")
        if cfg.init is not None and not cfg.resume and cfg.calibrate_init:
            result.calib_images = data.normalize(train_set.sample(min(cfg.calib, len(train_set)), cfg.seed).x.cpu())
    else:
        if cfg.data_source is None or cfg.val_source is None:
            raise FileNotFoundError("ImageNet training needs --data <train ImageFolder> and --val-data <val ImageFolder>")
        loader = imagenet.imagenet_train_loader(cfg.data_source, per_process, cfg.workers, where.rank, where.world, cfg.seed,
                                            cfg.subset)
        val_set = imagenet.imagenet_val_set(cfg.val_source, cfg.val_subset)
        val_loader = imagenet.val_loader(imagenet.shard(val_set, where.rank, where.world), 256, cfg.workers)

        def epoch_batches(epoch: int):
            loader.sampler.set_epoch(epoch)
            return loader

        result = TrainingData(epoch_batches, len(loader), lambda: val_loader, len(val_loader),
                              len(val_set), "imagenet")
    if cfg.max_steps is not None:
        result.steps = min(result.steps, cfg.max_steps)
    if result.steps == 0:
        raise ValueError(f"no full batch of {per_process} images per process in the training data: give more images "
                         "(--subset) or a smaller --batch-size")
    return result
