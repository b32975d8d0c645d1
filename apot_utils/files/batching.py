"""Batches of CIFAR-10 arrays: the training augmentation, each epoch's shuffled order (the same on every rank of
a distributed run) and normalized batches on a device."""
from __future__ import annotations

import torch

from .data import ImageArrays, normalize


def augment(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """CIFAR training augmentation on a uint8 batch [B, 32, 32, 3], on its own device:
    random crop with 4 pixels of zero padding, then a random horizontal flip."""
    b, h, w, _ = batch.shape
    device = batch.device
    padded = torch.nn.functional.pad(batch, (0, 0, 4, 4, 4, 4))
    dy = torch.randint(0, 9, (b,), device=device, generator=generator)
    dx = torch.randint(0, 9, (b,), device=device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, :]
    flip = torch.rand(b, device=device, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None], dx[:, None, None] + (w - 1) - torch.arange(w, device=device)[None, None, :], cols)
    return padded[torch.arange(b, device=device)[:, None, None], rows, cols]


def epoch_order(n: int, epoch: int, seed: int = 0, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's share of epoch ``epoch``'s shuffled order of n items: one permutation, the same on
    every rank (seeded by seed and epoch), dealt out round-robin; the tail that does not divide
    evenly is dropped so that every rank takes the same number of steps."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[: n - n % world][rank::world]


def batches(data: ImageArrays, batch_size: int, order: torch.Tensor | None = None, train_augment: bool = False,
            generator: torch.Generator | None = None, device=None):
    """Yield (normalized float images [B, 3, 32, 32], labels [B]) on ``device``.

    order: the indices to visit (default all, in order: a class-sorted file, such as a sample of the JPEG
    copy, then gives one class a batch; train on :func:`epoch_order`'s shuffle).
    train_augment: random crop and flip (:func:`augment`, drawing from ``generator``, which must
    live on the arrays' device). The arrays stay where they are (CPU, or already on the GPU for a
    device-resident pipeline); each batch is moved, augmented and normalized there.
    """
    order = torch.arange(len(data)) if order is None else order
    n = len(order)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size].to(data.x.device)
        x, y = data.x[idx], data.y[idx]
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if train_augment:
            x = augment(x, generator)
        yield normalize(x), y


def num_batches(data: ImageArrays, batch_size: int) -> int:
    return (len(data) + batch_size - 1) // batch_size
