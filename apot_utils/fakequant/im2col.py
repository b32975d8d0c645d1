"""Grouped convolutions as im2col and a matrix product, for the float64 forwards of calibration.

PyTorch's CPU float64 convolution has no oneDNN kernel: a grouped one (MobileNetV2's depthwise layers) loops over
its groups, each a small parallel region. On a quiet 2-core machine that costs little (calibrating torchvision's
MobileNetV2 on 8 images: 1.11 s against 0.85 s this way, ``benchmarks/bench_calibrate_grouped.py``), but with the
cores shared by other processes those regions wait on each other: the same calibration took 98 s while two training
processes ran, and 1 s this way. :func:`im2col_convolutions` makes every grouped ``nn.Conv2d`` of the given models
(subclasses included) compute as ``F.unfold`` and one batched matrix product over the groups (float64 BLAS), for
the duration of a ``with`` block; the values are float64 convolutions, rounded in another summation order. Ungrouped
ones keep torch's own float64 path (itself im2col and a matrix product, and a little faster)."""
from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_MAX_COLUMN_BYTES = 1 << 28          # unfold this many bytes of columns at a time (images per chunk)


def conv2d_by_matmul(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups: int = 1
                     ) -> torch.Tensor:
    """conv2d of x [N, C, H, W] with weight [O, C / groups, kh, kw], zero padding, no bias, as ``F.unfold`` and one
    batched matrix product over the groups, images taken in chunks of at most 256 MiB of columns. Returns
    [N, O, H', W'] in x's dtype (weight cast to it). Used here for calibration and by the integer path's exact
    convolution (:func:`apot_utils.integer.arithmetic.exact_integer_conv2d`)."""
    (kh, kw) = weight.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = (nn.modules.utils._pair(v) for v in (stride, padding, dilation))
    height = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    width = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = weight.shape[0]
    per_group = weight.to(x.dtype).reshape(groups, out // groups, -1)           # [G, O / G, C / G · kh · kw]
    per_image = x.shape[1] * kh * kw * height * width * x.element_size()
    parts = []
    for chunk in x.split(max(1, _MAX_COLUMN_BYTES // max(per_image, 1))):
        cols = F.unfold(chunk, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))   # [n, C·kh·kw, L]
        parts.append(torch.matmul(per_group, cols.view(len(chunk), groups, -1, cols.shape[2])))
    return torch.cat(parts).view(len(x), out, height, width)


def _conv_forward(self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """nn.Conv2d._conv_forward by :func:`conv2d_by_matmul`: x [N, C, H, W] -> [N, O, H', W']."""
    if isinstance(self.padding, str):                  # 'same' / 'valid': torch's own
        return nn.Conv2d._conv_forward(self, x, weight, bias)
    padding = self.padding
    if self.padding_mode != "zeros":
        x, padding = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), (0, 0)
    y = conv2d_by_matmul(x, weight, self.stride, padding, self.dilation, self.groups)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


@contextmanager
def im2col_convolutions(*models: nn.Module):
    """Inside the block every grouped nn.Conv2d of ``models`` convolves by im2col (module docstring); restored on
    exit."""
    convs = [m for model in models for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    for m in convs:
        m._conv_forward = types.MethodType(_conv_forward, m)
    try:
        yield
    finally:
        for m in convs:
            m.__dict__.pop("_conv_forward", None)
