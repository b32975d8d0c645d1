"""The ``fast`` ONNX variant of this project's ResNets: ONNX Runtime's integer kernel where it has a fast one.

Each block's first convolution is a ``QLinearConv`` (uint8 activation codes × int8 weight codes, int32 sums) with
BatchNorm folded into its per-channel scales and bias, whose uint8 output is the cell of the next convolution's
activation grid: r steps per 1/I_max (r the largest power of two with r·I_max <= 255), on which every midpoint
between two levels is a cell boundary, so a 256-entry ``Gather`` turns a cell into its level (ReLU and clipping
come with the uint8 saturation). The block's second convolution and its downsample feed the float32 residual
stream, so they run as float ``Conv`` of the level integers with the int8 codes dequantized and BatchNorm folded;
a block's input is put on its grid by QuantizeLinear. What differs from the fake-quantized model: the int32 bias
rounds BatchNorm's shift to accumulator units (made p·m times finer by stored multipliers,
:meth:`FastResNet.qlinear_conv`), and float32 roundings elsewhere; a value that lands on the other side of a cell
boundary can change a level. The stem, the pool and the classifier are the ``float`` variant's.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.levels import integer_levels
from ..integer.layers import FixedOrderBatchNorm2d, IntegerConv2d
from .onnx_builder import GraphBuilder, _tensor
from .onnx_layers import LayerEmitter, conv_attributes
from .onnx_tables import grid_steps, grid_table


class FastResNet(LayerEmitter):
    """The fast variant of an integer ResNet of this package (``model.layer1`` ...: BasicBlocks)."""

    def __init__(self, g: GraphBuilder, model: nn.Module):
        super().__init__(g, exact=False)
        self.model = model

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
            g.const(np.array(0, np.uint8), "y_zero"), g.const(_tensor(bias, np.int32), "bias")], **conv_attributes(conv))

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
        return g.op("Conv", [levels, weight, g.const(_tensor(shift, np.float32), "bias")], **conv_attributes(conv))

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

    def build(self) -> str:
        m, g = self.model, self.g
        with g.scope("stem"):
            x = g.op("Relu", [self.bn(m.bn1, self.eight_bit_conv(m.conv1, "images"))])
            if hasattr(m, "maxpool"):
                x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for i, block in enumerate(getattr(m, stage, ())):
                with g.scope(f"{stage}.{i}"):
                    x = self.fast_block(block, x)
        with g.scope("head"):
            return self.eight_bit_linear(m.fc, g.op("Flatten", [self.global_pool(x)], axis=1))
