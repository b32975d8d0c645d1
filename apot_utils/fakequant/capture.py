"""What a layer receives: forward pre-hooks registered for the length of a block and always removed."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

import torch
from torch import nn


@contextmanager
def capturing_inputs(modules: Iterable[nn.Module], record: Callable[[nn.Module, torch.Tensor], None]):
    """Inside the block, every forward of one of ``modules`` first calls ``record(module, its input)`` (the
    first positional argument, detached)."""
    def hook(module: nn.Module, args: tuple) -> None:      # returns None: the module's input stays as it is
        record(module, args[0].detach())

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the wanted input is seen."""


def inputs_of(model: nn.Module, module: nn.Module, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """What ``module`` receives the first time ``model`` reaches it, for each batch of inputs to ``model``, one
    tensor a batch; each forward stops there (no gradient)."""
    seen = []

    def stop(m, x):
        seen.append(x)
        raise _Captured

    with capturing_inputs([module], stop), torch.no_grad():
        for inputs in batches:
            try:
                model(inputs)
            except _Captured:
                pass
    return seen


def input_to(model: nn.Module, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What ``module`` receives the first time ``model(inputs)`` reaches it."""
    return inputs_of(model, module, [inputs])[0]
