"""The release's 8-bit first convolution and last linear layer: weights rounded to 255 levels of max(w)."""
from __future__ import annotations

import torch


def eight_bit_codes(w: torch.Tensor) -> torch.Tensor:
    """The integer codes ``round(w / max(w) · 127)`` (w's dtype, no gradient)."""
    w = w.detach()
    return w.div(w.max()).mul(127).round()


def quantize_8bit(w: torch.Tensor) -> torch.Tensor:
    """``eight_bit_codes(w) / 127 · max(w)``, with a straight-through gradient."""
    wq = eight_bit_codes(w).div(127).mul(w.detach().max())
    return (wq - w).detach() + w
