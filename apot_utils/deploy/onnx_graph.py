"""A quantized ResNet as an ONNX graph of standard operators that ONNX Runtime runs, in three variants.

The input is an integer model (:func:`apot_utils.integer.convert.to_integer`): its weights are integer codes
(:class:`~apot_utils.integer.layers.IntegerConv2d`), so every variant stores them as int8 initializers with
their scales.

- ``exact``: the arithmetic of :func:`apot_utils.integer.layers.integer_arithmetic`, operator for operator, so
  the logits are the integer path's bits (and so its predictions) on every machine:
  the APoT activation projection as a bucket lookup on exact float32 decision thresholds
  (:func:`activation_thresholds`), each quantized convolution a float32 ``Conv`` of integer-valued
  tensors (exact: every partial sum stays below 2^24; a layer that could exceed it is split by input
  channels and the parts added in float64), the rescale s in float64, BatchNorm as Sub, Mul, Add, the
  8-bit first convolution and last linear layer and the global pool summed one term at a time in the
  integer path's order.
- ``fast``: ONNX Runtime's integer kernel where it has a fast one. Each block's first convolution is a
  ``QLinearConv`` (uint8 activation codes × int8 weight codes, int32 sums) with BatchNorm folded into its
  per-channel scales and bias, whose uint8 output is the cell of the next convolution's activation grid:
  r steps per 1/I_max (r the largest power of two with r·I_max <= 255), on which every midpoint between two
  levels is a cell boundary, so a 256-entry ``Gather`` turns a cell into its level (ReLU and clipping come
  with the uint8 saturation). The block's second convolution and its downsample feed the float32 residual
  stream, so they run as float ``Conv`` of the level integers with the int8 codes dequantized and BatchNorm
  folded; a block's input is put on its grid by QuantizeLinear. What differs from the fake-quantized model:
  the int32 bias rounds BatchNorm's shift to accumulator units (made p·m times finer by stored multipliers,
  :meth:`_Exporter.qlinear_conv`), and float32 roundings elsewhere; a value that lands on the other side of a
  cell boundary can change a level.
- ``float``: the same network with the same (quantized) weights and no activation quantization, in float32
  Conv, BatchNormalization, Relu, GlobalAveragePool and Gemm: the speed baseline of ``benchmarks/bench_onnx.py``.

:func:`to_onnx` builds the model, :func:`save_onnx` writes it (refusing an existing file, atomically).
Shapes: input ``images`` [N, 3, H, W] float32 (normalized as for the PyTorch model), output ``logits``
[N, classes] float32, N free.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.levels import integer_levels
from ..fast.projection import decisions, project
from ..integer.arithmetic import FLOAT32_EXACT, accumulator_bound
from ..integer.layers import Fixed8bit, FixedOrderBatchNorm2d, IntegerConv2d

VARIANTS = ("exact", "fast", "float")
OPSET = 21
FORMAT = "apot-onnx-v1"
_MAX_BUCKETS = 1 << 16


class UnsupportedModel(ValueError):
    """A model the exporter cannot express in the requested variant (the message says why)."""


def _tensor(value, dtype) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(value).detach().cpu().numpy().astype(dtype, copy=False))


class GraphBuilder:
    """Nodes and initializers of one ONNX graph, named after the layer they implement (``scope``)."""

    def __init__(self):
        import onnx.helper
        import onnx.numpy_helper
        self._helper, self._numpy = onnx.helper, onnx.numpy_helper
        self.nodes, self.initializers, self._scope, self._count = [], [], [], 0

    @contextmanager
    def scope(self, name: str):
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _name(self, what: str) -> str:
        self._count += 1
        return "/".join(self._scope + [what]) + f"_{self._count}"

    def const(self, array: np.ndarray, what: str = "const") -> str:
        name = self._name(what)
        self.initializers.append(self._numpy.from_array(np.asarray(array), name))
        return name

    def output(self, value: str, name: str) -> None:
        """Make ``value`` the graph output ``name``."""
        self.nodes.append(self._helper.make_node("Identity", [value], [name], name=name))

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes):
        """Add one node; returns its output name (a list of them when ``outputs`` > 1)."""
        names = [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(self._helper.make_node(op_type, inputs, names, name=self._name(op_type + "_node"),
                                                 **attributes))
        return names[0] if outputs == 1 else names


# ---- the activation projection -----------------------------------------------------------------------------

def activation_thresholds(conv: IntegerConv2d) -> torch.Tensor:
    """The float32 decision thresholds of ``conv``'s activation quantizer in input units: an input x gets
    the i-th sorted level exactly when thresholds[i-1] <= x < thresholds[i], the integer path's
    decisions (:func:`apot_utils.fast.projection.decisions` for fl(x / α), computed with α folded in)."""
    values = tuple(conv.act_levels.float().tolist())
    return decisions(values, torch.float32, torch.device("cpu"), float(conv.act_alpha.float())).thresholds


def bucket_tables(thresholds: torch.Tensor, alpha: float, integers: torch.Tensor):
    """Tables for an exact lookup of the level of a float32 input x among float32 thresholds.

    The bucket of x is b(x) = clip(floor(fl(x · c)), 0, B − 1), c = fl(B / α), B = 2^m the smallest power of
    two that gives every threshold a bucket of its own. b is monotone in x, so the thresholds in lower buckets
    are all <= x and those in higher ones all > x: x's level is ``levels[2 b + (x >= edge[b])]``, ``edge[b]``
    the bucket's threshold (+inf where it holds none). Returns c (0-d float32), B, edge ([B] float32) and
    levels ([2 B] float32: the level integers below and at or above each bucket's threshold)."""
    for m in range(4, 17):
        count = 1 << m
        scale = torch.tensor(count / alpha, dtype=torch.float32)
        keys = torch.floor(thresholds * scale).clamp(0, count - 1).long()
        if bool((keys[1:] > keys[:-1]).all()):
            break
    else:
        raise UnsupportedModel(f"the activation thresholds need more than {_MAX_BUCKETS} buckets")
    base = torch.searchsorted(keys, torch.arange(count))                 # thresholds in lower buckets
    has = torch.zeros(count, dtype=torch.long)
    has[keys] = 1
    edge = torch.full((count,), float("inf"))
    edge[keys] = thresholds
    levels = torch.stack([integers[base], integers[base + has]], dim=1).reshape(-1).float()
    return scale.numpy(), count, edge.numpy(), levels.numpy()


def grid_steps(bits: int, scheme: str, terms: int | None) -> int:
    """r: the fast variant's uint8 grid has r steps per 1 / I_max (the largest power of two with r · I_max <= 255,
    at least 2 so that every midpoint between two levels is a grid point)."""
    top = int(integer_levels(bits, scheme, terms)[-1])
    r = 1 << int(math.floor(math.log2(255 / top))) if top <= 127 else 0
    if r < 2:
        raise UnsupportedModel(f"{bits}-bit {scheme} activations: the largest level integer is {top}, so the midpoints "
                               "between levels need more than 8 bits (the fast variant runs up to 5-bit APoT)")
    return r


def grid_table(conv: IntegerConv2d, r: int) -> np.ndarray:
    """[256] uint8: the activation integer of each cell m = 0..255 of the fast variant's grid, the inputs
    between m and m + 1 steps of α / (r · I_max): every midpoint between two levels is a cell boundary, so a
    cell lies on one side of each and its level is that of its centre (beyond α: the top level)."""
    top = int(conv.act_integers[-1])
    u = (torch.arange(256, dtype=torch.float64) + 0.5) / (r * top)
    level = project(u.float(), conv.act_levels.float())
    index = torch.searchsorted(conv.act_sorted.float(), level)
    return conv.act_integers[index].numpy().astype(np.uint8)


# ---- the exporter ------------------------------------------------------------------------------------------

def _conv_attributes(conv) -> dict:
    stride, padding = (nn.modules.utils._pair(v) for v in (conv.stride, conv.padding))
    return {"strides": list(stride), "pads": [padding[0], padding[1], padding[0], padding[1]]}


class _Exporter:
    def __init__(self, model: nn.Module, variant: str):
        self.model, self.variant, self.g = model, variant, GraphBuilder()

    # shared pieces
    def bn(self, norm: FixedOrderBatchNorm2d, x: str) -> str:
        g = self.g
        if self.variant != "exact":
            params = [g.const(_tensor(getattr(norm, k), np.float32), k)
                      for k in ("weight", "bias", "running_mean", "running_var")]
            return g.op("BatchNormalization", [x, *params], epsilon=float(norm.eps))
        shape = (1, -1, 1, 1)
        scale = norm.weight.float() / (norm.running_var.float() + norm.eps).sqrt()       # as FixedOrderBatchNorm2d
        x = g.op("Sub", [x, g.const(_tensor(norm.running_mean.float().view(shape), np.float32), "mean")])
        x = g.op("Mul", [x, g.const(_tensor(scale.view(shape), np.float32), "scale")])
        return g.op("Add", [x, g.const(_tensor(norm.bias.float().view(shape), np.float32), "bias")])

    def first_conv(self, conv: Fixed8bit, x: str) -> str:
        g = self.g
        weight = conv.codes.float().div(127).mul(conv.weight_max.float())                 # as Fixed8bit
        stride, padding = (nn.modules.utils._pair(v) for v in conv.conv)
        if self.variant != "exact":
            return g.op("Conv", [x, g.const(_tensor(weight, np.float32), "weight")],
                        strides=list(stride), pads=[padding[0], padding[1], padding[0], padding[1]])
        # fixed_order_conv2d: taps in (input channel, row, column) order, each product then each sum rounded
        padded = g.op("Pad", [x, g.const(np.array([0, 0, padding[0], padding[1], 0, 0, padding[0], padding[1]],
                                                  dtype=np.int64), "pads")])
        shape = g.op("Shape", [padded])
        height = g.op("Gather", [shape, g.const(np.array([2], dtype=np.int64), "h")])
        width = g.op("Gather", [shape, g.const(np.array([3], dtype=np.int64), "w")])
        kh, kw = weight.shape[2:]
        acc = None
        for c in range(weight.shape[1]):
            for i in range(kh):
                for j in range(kw):
                    # rows i, i + s, ... up to the last full window: end = H_pad − (kh − 1 − i)
                    ends = g.op("Concat", [g.op("Sub", [height, g.const(np.array([kh - 1 - i], np.int64), "dh")]),
                                           g.op("Sub", [width, g.const(np.array([kw - 1 - j], np.int64), "dw")])], axis=0)
                    tap = g.op("Slice", [padded, g.const(np.array([i, j], np.int64), "starts"), ends,
                                         g.const(np.array([2, 3], np.int64), "axes"),
                                         g.const(np.array(stride, np.int64), "steps")])
                    tap = g.op("Slice", [tap, g.const(np.array([c], np.int64), "c0"),
                                         g.const(np.array([c + 1], np.int64), "c1"), g.const(np.array([1], np.int64), "axis")])
                    product = g.op("Mul", [tap, g.const(_tensor(weight[:, c, i, j].view(1, -1, 1, 1), np.float32), "w")])
                    acc = product if acc is None else g.op("Add", [acc, product])
        if conv.bias is not None:
            acc = g.op("Add", [acc, g.const(_tensor(conv.bias.float().view(1, -1, 1, 1), np.float32), "bias")])
        return acc

    def pool_and_fc(self, fc: Fixed8bit, x: str, positions: int) -> str:
        """The global average pool over ``positions`` (H·W) and the 8-bit fc: logits [N, classes]."""
        g = self.g
        weight = fc.codes.float().div(127).mul(fc.weight_max.float())                     # [O, K]
        if self.variant != "exact":
            x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
            inputs = [x, g.const(_tensor(weight, np.float32), "weight")]
            if fc.bias is not None:
                inputs.append(g.const(_tensor(fc.bias, np.float32), "bias"))
            return g.op("Gemm", inputs, transB=1)
        # fixed_order_global_mean: positions added in row-major order, then divided by their count
        flat = g.op("Reshape", [x, g.const(np.array([0, 0, -1], np.int64), "shape")])          # [N, C, H·W]
        count = positions
        parts = g.op("Split", [flat, g.const(np.ones(count, np.int64), "split")], outputs=count, axis=2)
        acc = parts[0]
        for part in parts[1:]:
            acc = g.op("Add", [acc, part])
        mean = g.op("Div", [g.op("Squeeze", [acc, g.const(np.array([2], np.int64), "axis")]),
                            g.const(np.array(count, np.float32), "count")])               # [N, C]
        # fixed_order_linear: x[:, k] · w[:, k] for k = 0, 1, ... added in that order, then the bias
        products = g.op("Mul", [g.op("Unsqueeze", [mean, g.const(np.array([2], np.int64), "axis")]),
                                g.const(_tensor(weight.t(), np.float32), "weight_t")])   # [N, K, O]
        k = weight.shape[1]
        parts = g.op("Split", [products, g.const(np.ones(k, np.int64), "split")], outputs=k, axis=1)
        acc = parts[0]
        for part in parts[1:]:
            acc = g.op("Add", [acc, part])
        acc = g.op("Squeeze", [acc, g.const(np.array([1], np.int64), "axis")])
        if fc.bias is not None:
            acc = g.op("Add", [acc, g.const(_tensor(fc.bias.float(), np.float32), "bias")])
        return acc

    # the exact variant's quantized convolution
    def exact_conv(self, conv: IntegerConv2d, x: str) -> str:
        g = self.g
        thresholds = activation_thresholds(conv)
        scale, count, edge, levels = bucket_tables(thresholds, float(conv.act_alpha.float()), conv.act_integers)
        with g.scope("quantize"):
            key = g.op("Floor", [g.op("Mul", [x, g.const(scale, "buckets_per_input")])])
            key = g.op("Cast", [g.op("Clip", [key, g.const(np.array(0, np.float32), "lo"),
                                              g.const(np.array(count - 1, np.float32), "hi")])], to=7)   # int64
            above = g.op("Cast", [g.op("GreaterOrEqual", [x, g.op("Gather", [g.const(edge, "edge"), key])])], to=7)
            index = g.op("Add", [g.op("Mul", [key, g.const(np.array(2, np.int64), "two")]), above])
            codes = g.op("Gather", [g.const(levels, "levels"), index])                      # I_a, float32
        weight = conv.weight_int
        attrs = _conv_attributes(conv)
        top = int(conv.act_integers[-1])
        parts = 1
        while any(accumulator_bound(top, w) >= FLOAT32_EXACT for w in weight.chunk(parts, dim=1)):
            parts *= 2
            if parts > weight.shape[1]:
                raise UnsupportedModel(f"{conv}: one input channel's partial sums exceed float32's exact range")
        sums = []
        for c, w in zip(range(0, weight.shape[1], -(-weight.shape[1] // parts)), weight.chunk(parts, dim=1)):
            part = codes if parts == 1 else g.op("Slice", [codes, g.const(np.array([c], np.int64), "c0"),
                                                         g.const(np.array([c + w.shape[1]], np.int64), "c1"),
                                                         g.const(np.array([1], np.int64), "axis")])
            w_float = g.op("Cast", [g.const(_tensor(w, np.int8), "weight_codes")], to=1)
            sums.append(g.op("Cast", [g.op("Conv", [part, w_float], **attrs)], to=11))     # exact integers, float64
        acc = sums[0]
        for s in sums[1:]:
            acc = g.op("Add", [acc, s])
        acc = g.op("Mul", [acc, g.const(_tensor(conv.scale.view(1, -1, 1, 1), np.float64), "s")])
        return g.op("Cast", [acc], to=1)

    def float_conv(self, conv: IntegerConv2d, x: str) -> str:
        return self.g.op("Conv", [x, self.g.const(_tensor(conv.weight, np.float32), "weight")], **_conv_attributes(conv))

    # the fast variant
    def grid(self, conv: IntegerConv2d) -> tuple[float, np.ndarray]:
        """The fast variant's grid for ``conv``'s activations: its step (α / (r · I_max), input units) and the
        [256] uint8 table of :func:`grid_table`."""
        r = grid_steps(conv.bits, conv.scheme, conv.terms)
        return float(conv.act_alpha.double()) / (r * int(conv.act_integers[-1])), grid_table(conv, r)

    def grid_cell(self, conv: IntegerConv2d, x: str) -> str:
        """The uint8 cell of float x on ``conv``'s grid, floor(x / step) saturated to 0..255: QuantizeLinear
        (which rounds to nearest) of x − step / 2."""
        g = self.g
        step, _ = self.grid(conv)
        with g.scope("quantize"):
            lowered = g.op("Sub", [x, g.const(np.array(step / 2, np.float32), "half_step")])
            return g.op("QuantizeLinear", [lowered, g.const(np.array(step, np.float32), "step"),
                                           g.const(np.array(0, np.uint8), "zero")])

    def codes_of(self, cell: str, table: np.ndarray) -> str:
        """The activation integers of grid cells by a 256-entry Gather (``table``'s dtype: uint8 or float32)."""
        return self.g.op("Gather", [self.g.const(table, "table"), self.g.op("Cast", [cell], to=6)])

    @staticmethod
    def folded(conv: IntegerConv2d, norm: FixedOrderBatchNorm2d):
        """BatchNorm folded into a quantized convolution of activation integers a: (x_scale, w_scale [O], weight
        codes [O, C, kh, kw], shift [O]) with bn(conv(x)) = x_scale · w_scale[o] · Σ a · weight[o] + shift[o],
        w_scale > 0 (a channel with γ < 0 has its codes negated, one with γ = 0 zero codes)."""
        gain = norm.weight.double() / (norm.running_var.double() + norm.eps).sqrt()          # [O]
        shift = norm.bias.double() - norm.running_mean.double() * gain
        x_scale = float(conv.act_alpha.double()) / int(conv.act_integers[-1])
        w_top = int(integer_levels(conv.bits - 1, conv.scheme, conv.terms)[-1])
        w_scale = conv.weight_alpha.double().reshape(-1).expand(len(gain)) / w_top * gain.abs()
        dead = w_scale == 0
        weight = conv.weight_int * torch.where(gain < 0, -1, 1).view(-1, 1, 1, 1)
        weight = torch.where(dead.view(-1, 1, 1, 1), torch.zeros_like(weight), weight)
        return x_scale, torch.where(dead, torch.ones_like(w_scale), w_scale), weight, shift

    def qlinear_conv(self, conv: IntegerConv2d, norm: FixedOrderBatchNorm2d, cell: str, out_step: float) -> str:
        """QLinearConv of ``conv``'s input cells (uint8, :meth:`grid_cell`) through the table to activation codes,
        with int8 weight codes and int32 sums, BatchNorm folded (:meth:`folded`): its uint8 output is the cell
        floor(bn(conv(x)) / out_step) saturated to 0..255 (the ReLU included), half a step taken off in the bias.

        The int32 bias counts accumulator units, x_scale · w_scale[o], and at low bitwidths one unit spans many
        output cells (at 2 bits the activation integers are 0..4 and the weight integers 0, ±1). So the codes are
        stored multiplied, weights by m and activations by p (and the scales divided): the same values, a bias
        p · m times finer. m, then p, are as large as int8 and uint8 allow while a pair of products stays below
        2^15 (x86's u8 × s8 instructions add pairs of products in int16, saturating)."""
        g = self.g
        x_scale, w_scale, weight, shift = self.folded(conv, norm)
        a_top, w_top = int(conv.act_integers[-1]), max(int(weight.abs().max()), 1)
        room = (2**15 - 1) // (2 * a_top * w_top)                  # the largest p · m the int16 pairs allow
        m = max(1, min(127 // w_top, room))
        p = max(1, min(255 // a_top, room // m))
        weight, w_scale, x_scale = weight * m, w_scale / m, x_scale / p
        _, table = self.grid(conv)
        codes = self.codes_of(cell, (table.astype(np.int64) * p).astype(np.uint8))
        bias = torch.round((shift - out_step / 2) / (x_scale * w_scale)).clamp(-2**31, 2**31 - 1)   # accumulator units
        return g.op("QLinearConv", [
            codes, g.const(np.array(x_scale, np.float32), "x_scale"), g.const(np.array(0, np.uint8), "x_zero"),
            g.const(_tensor(weight, np.int8), "weight_codes"), g.const(_tensor(w_scale, np.float32), "w_scale"),
            g.const(np.zeros(len(w_scale), np.int8), "w_zero"), g.const(np.array(out_step, np.float32), "y_scale"),
            g.const(np.array(0, np.uint8), "y_zero"), g.const(_tensor(bias, np.int32), "bias")], **_conv_attributes(conv))

    def float_branch(self, conv: IntegerConv2d, norm: FixedOrderBatchNorm2d, cell: str) -> str:
        """bn(conv(x)) of a residual branch in float32: the cells' level integers (a float table) into a float
        Conv whose weights are the int8 codes times their scales, BatchNorm folded in (:meth:`folded`)."""
        g = self.g
        _, table = self.grid(conv)
        levels = self.codes_of(cell, table.astype(np.float32))
        x_scale, w_scale, weight, shift = self.folded(conv, norm)
        # Cast and Mul of initializers, which ONNX Runtime folds into one float weight at load (it keeps a
        # DequantizeLinear of an initializer unfolded, and a Conv with a computed weight runs 2× slower)
        weight = g.op("Mul", [g.op("Cast", [g.const(_tensor(weight, np.int8), "weight_codes")], to=1),
                              g.const(_tensor((w_scale * x_scale).view(-1, *[1] * (weight.dim() - 1)), np.float32), "w_scale")])
        return g.op("Conv", [levels, weight, g.const(_tensor(shift, np.float32), "bias")], **_conv_attributes(conv))

    def fast_block(self, block: nn.Module, x: str) -> str:
        g = self.g
        with g.scope("conv1"):              # straight onto conv2's grid: ReLU and the cell in one requantization
            cell = self.qlinear_conv(block.conv1, block.bn1, self.grid_cell(block.conv1, x), self.grid(block.conv2)[0])
        with g.scope("conv2"):
            out = self.float_branch(block.conv2, block.bn2, cell)
        residual = x
        if block.downsample is not None:
            with g.scope("downsample"):
                conv, norm = block.downsample
                residual = self.float_branch(conv, norm, self.grid_cell(conv, x))
        return g.op("Relu", [g.op("Add", [out, residual])])

    def block(self, block: nn.Module, x: str) -> str:
        g = self.g
        if self.variant == "fast":
            return self.fast_block(block, x)
        conv = self.exact_conv if self.variant == "exact" else self.float_conv
        with g.scope("conv1"):
            out = g.op("Relu", [self.bn(block.bn1, conv(block.conv1, x))])
        with g.scope("conv2"):
            out = self.bn(block.bn2, conv(block.conv2, out))
        residual = x
        if block.downsample is not None:
            with g.scope("downsample"):
                residual = self.bn(block.downsample[1], conv(block.downsample[0], x))
        return g.op("Relu", [g.op("Add", [out, residual])])

    def build(self, image_size: int) -> GraphBuilder:
        m, g = self.model, self.g
        with g.scope("stem"):
            x = g.op("Relu", [self.bn(m.bn1, self.first_conv(m.conv1, "images"))])
            if hasattr(m, "maxpool"):
                x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        stages = [s for s in ("layer1", "layer2", "layer3", "layer4") if hasattr(m, s)]
        for stage in stages:
            for i, block in enumerate(getattr(m, stage)):
                with g.scope(f"{stage}.{i}"):
                    x = self.block(block, x)
        side = image_size // (4 if hasattr(m, "maxpool") else 1) // 2 ** (len(stages) - 1)
        with g.scope("head"):
            out = self.pool_and_fc(m.fc, x, side * side)
        g.output(out, "logits")
        return g


def check_exportable(model: nn.Module, variant: str) -> None:
    """Raise :class:`UnsupportedModel`, saying why, for a model ``variant`` cannot express."""
    if variant not in VARIANTS:
        raise UnsupportedModel(f"variant must be one of {VARIANTS}, got {variant!r}")
    convs = [m for m in model.modules() if isinstance(m, IntegerConv2d)]
    if not convs:
        raise UnsupportedModel("the model has no integer layers: export an integer model (to_integer) of a 2..8-bit checkpoint")
    if not (hasattr(model, "layer1") and isinstance(model.conv1, Fixed8bit) and isinstance(model.fc, Fixed8bit)):
        raise UnsupportedModel(f"{type(model).__name__}: the ONNX exporter writes this project's ResNets only")
    for conv in convs:
        if int(conv.weight_int.abs().max()) > 127:
            raise UnsupportedModel(f"{conv.bits}-bit {conv.scheme} weights: integers up to {int(conv.weight_int.abs().max())} "
                                   "do not fit int8 codes")
        if variant == "fast":
            grid_steps(conv.bits, conv.scheme, conv.terms)
        if conv.act_levels.dtype != torch.float32:
            raise UnsupportedModel("export the integer model with level_values='release' (float32 levels)")


def to_onnx(model: nn.Module, variant: str = "exact", meta: dict | None = None):
    """The ONNX model (``onnx.ModelProto``, checked by ``onnx.checker``) of an integer ResNet
    (:func:`~apot_utils.integer.convert.to_integer`, ``level_values='release'``) in ``variant``
    (module docstring). meta: stored in the file's metadata (a ModelSpec's meta, source), JSON-encoded.
    Raises :class:`UnsupportedModel` with the reason for a model the variant cannot express."""
    import onnx
    import onnx.helper as helper

    check_exportable(model, variant)
    image_size = 32 if not hasattr(model, "maxpool") else 224
    classes = model.fc.codes.shape[0]
    g = _Exporter(model, variant).build(image_size)
    graph = helper.make_graph(
        g.nodes, f"apot_{variant}",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", classes])], g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="apot_utils")
    proto.ir_version = 10
    fields = {"format": FORMAT, "variant": variant, **{k: json.dumps(v) for k, v in (meta or {}).items()}}
    helper.set_model_props(proto, fields)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_onnx(proto, out: str | Path) -> Path:
    """Write ``proto`` to ``out`` (a new .onnx file; refused if it exists), atomically."""
    from ..files import checkpoints
    from ..files.paths import new_file

    out = new_file(out, ".onnx")
    data = proto.SerializeToString()
    return checkpoints.write_atomically(out, lambda f: f.write(data))
