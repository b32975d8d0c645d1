"""The layers of an integer model as ONNX operators, in the ``exact`` variant (the arithmetic of
:func:`apot_utils.integer.layers.integer_arithmetic`, operator for operator) or the ``float`` one (the same weights,
no activation quantization), and :class:`GraphWalker`, which follows the model's own forward (``torch.fx``) and
emits each step: any CNN the integer path runs, not one architecture's shapes.

Exact, per layer: the activation projection as a bucket lookup on exact float32 decision thresholds
(:func:`~apot_utils.deploy.onnx_tables.bucket_tables`; a signed input: its magnitude's level, times its sign), each
quantized convolution a float32 ``Conv`` of integer-valued tensors (exact: every partial sum stays below 2^24; a
layer without groups that could exceed it is split by input channels and the parts added in float64), the rescale s
in float64, then the bias, BatchNorm as Sub, Mul, Add, the 8-bit first convolution summed tap by tap, the 8-bit
linear layer and the global pool by ``CumSum`` (ONNX Runtime adds in index order, one rounding per term: the
integer path's order).
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..integer.arithmetic import FLOAT32_EXACT, accumulator_bound
from ..integer.layers import Fixed8bit, FixedOrderBatchNorm2d, FixedOrderGlobalPool, IntegerConv2d
from .onnx_builder import GraphBuilder, UnsupportedModel, _tensor
from .onnx_tables import activation_thresholds, bucket_tables


def conv_attributes(conv) -> dict:
    """ONNX Conv attributes of a layer with stride, padding, dilation (and groups)."""
    stride, padding, dilation = (nn.modules.utils._pair(v) for v in (conv.stride, conv.padding, conv.dilation))
    return {"strides": list(stride), "pads": [padding[0], padding[1], padding[0], padding[1]],
            "dilations": list(dilation), "group": getattr(conv, "groups", 1)}


class LayerEmitter:
    """One layer at a time into ``g`` (a :class:`GraphBuilder`); ``exact``: the integer path's arithmetic."""

    def __init__(self, g: GraphBuilder, exact: bool):
        self.g, self.exact = g, exact

    def ints(self, *values) -> str:
        return self.g.const(np.array(values, np.int64), "ints")

    def bn(self, norm: FixedOrderBatchNorm2d, x: str) -> str:
        g = self.g
        if not self.exact:
            params = [g.const(_tensor(getattr(norm, k), np.float32), k)
                      for k in ("weight", "bias", "running_mean", "running_var")]
            return g.op("BatchNormalization", [x, *params], epsilon=float(norm.eps))
        shape = (1, -1, 1, 1)
        scale = norm.weight.float() / (norm.running_var.float() + norm.eps).sqrt()       # as FixedOrderBatchNorm2d
        x = g.op("Sub", [x, g.const(_tensor(norm.running_mean.float().view(shape), np.float32), "mean")])
        x = g.op("Mul", [x, g.const(_tensor(scale.view(shape), np.float32), "scale")])
        return g.op("Add", [x, g.const(_tensor(norm.bias.float().view(shape), np.float32), "bias")])

    def eight_bit_conv(self, conv: Fixed8bit, x: str) -> str:
        """The 8-bit convolution; exact: fixed_order_conv2d, taps in (input channel, row, column) order, each
        product then each sum rounded in float32, then the bias. Any input size."""
        g = self.g
        weight = conv.codes.float().div(127).mul(conv.weight_max.float())                 # as Fixed8bit
        stride, padding, dilation = (nn.modules.utils._pair(v) for v in conv.conv)
        bias = None if conv.bias is None else g.const(_tensor(conv.bias.float(), np.float32), "bias")
        if not self.exact:
            return g.op("Conv", [x, g.const(_tensor(weight, np.float32), "weight")] + ([bias] if bias else []),
                        strides=list(stride), pads=[padding[0], padding[1], padding[0], padding[1]],
                        dilations=list(dilation))
        padded = g.op("Pad", [x, self.ints(0, 0, padding[0], padding[1], 0, 0, padding[0], padding[1])])
        shape = g.op("Shape", [padded])
        height, width = g.op("Gather", [shape, self.ints(2)]), g.op("Gather", [shape, self.ints(3)])
        kh, kw = weight.shape[2:]
        acc = None
        for c in range(weight.shape[1]):
            for i in range(kh):
                for j in range(kw):
                    # rows i·d, i·d + s, ... up to the last full window: end = H_pad − (kh − 1 − i) · d
                    ends = g.op("Concat", [g.op("Sub", [height, self.ints((kh - 1 - i) * dilation[0])]),
                                           g.op("Sub", [width, self.ints((kw - 1 - j) * dilation[1])])], axis=0)
                    tap = g.op("Slice", [padded, self.ints(i * dilation[0], j * dilation[1]), ends, self.ints(2, 3),
                                         self.ints(*stride)])
                    tap = g.op("Slice", [tap, self.ints(c), self.ints(c + 1), self.ints(1)])
                    product = g.op("Mul", [tap, g.const(_tensor(weight[:, c, i, j].view(1, -1, 1, 1), np.float32), "w")])
                    acc = product if acc is None else g.op("Add", [acc, product])
        return acc if bias is None else g.op("Add", [acc, g.op("Reshape", [bias, self.ints(1, -1, 1, 1)])])

    def last_sum(self, x: str, axis: int) -> str:
        """The sum of x along ``axis`` added in index order, one rounding per term (CumSum's last entry); the
        axis is dropped."""
        g = self.g
        cumulative = g.op("CumSum", [x, g.const(np.array(axis, np.int64), "axis")])
        return g.op("Gather", [cumulative, g.const(np.array(-1, np.int64), "last")], axis=axis)

    def eight_bit_linear(self, fc: Fixed8bit, x: str) -> str:
        """The 8-bit linear layer of x [N, K]; exact: fixed_order_linear, x[:, k] · w[:, k] added for k = 0, 1, ...,
        then the bias."""
        g = self.g
        weight = fc.codes.float().div(127).mul(fc.weight_max.float())                     # [O, K]
        bias = None if fc.bias is None else g.const(_tensor(fc.bias.float(), np.float32), "bias")
        if not self.exact:
            return g.op("Gemm", [x, g.const(_tensor(weight, np.float32), "weight")] + ([bias] if bias else []), transB=1)
        products = g.op("Mul", [g.op("Unsqueeze", [x, self.ints(2)]),
                                g.const(_tensor(weight.t(), np.float32), "weight_t")])   # [N, K, O]
        acc = self.last_sum(products, 1)
        return acc if bias is None else g.op("Add", [acc, bias])

    def global_pool(self, x: str) -> str:
        """The mean over H and W, [N, C, 1, 1]; exact: fixed_order_global_mean (row-major sum, then the division)."""
        g = self.g
        if not self.exact:
            return g.op("GlobalAveragePool", [x])
        flat = g.op("Reshape", [x, self.ints(0, 0, -1)])                                  # [N, C, H·W]
        count = g.op("Cast", [g.op("Gather", [g.op("Shape", [flat]), g.const(np.array(2, np.int64), "hw")])], to=1)
        mean = g.op("Div", [self.last_sum(flat, 2), count])
        return g.op("Unsqueeze", [mean, self.ints(2, 3)])

    def quantized_conv(self, conv: IntegerConv2d, x: str) -> str:
        g = self.g
        bias = None if conv.bias is None else g.const(_tensor(conv.bias.float().view(1, -1, 1, 1), np.float32), "bias")
        if not self.exact:
            out = g.op("Conv", [x, g.const(_tensor(conv.weight, np.float32), "weight")], **conv_attributes(conv))
            return out if bias is None else g.op("Add", [out, bias])
        thresholds = activation_thresholds(conv)
        scale, count, edge, levels = bucket_tables(thresholds, float(conv.act_alpha.float()), conv.act_integers)
        with g.scope("quantize"):
            magnitude = g.op("Abs", [x]) if conv.signed else x
            key = g.op("Floor", [g.op("Mul", [magnitude, g.const(scale, "buckets_per_input")])])
            key = g.op("Cast", [g.op("Clip", [key, g.const(np.array(0, np.float32), "lo"),
                                              g.const(np.array(count - 1, np.float32), "hi")])], to=7)   # int64
            above = g.op("Cast", [g.op("GreaterOrEqual", [magnitude, g.op("Gather", [g.const(edge, "edge"), key])])], to=7)
            index = g.op("Add", [g.op("Mul", [key, g.const(np.array(2, np.int64), "two")]), above])
            codes = g.op("Gather", [g.const(levels, "levels"), index])                      # I_a, float32
            if conv.signed:
                codes = g.op("Mul", [codes, g.op("Sign", [x])])
        weight, attrs = conv.weight_int, conv_attributes(conv)
        top = int(conv.act_integers[-1])
        parts = 1
        while any(accumulator_bound(top, w) >= FLOAT32_EXACT for w in weight.chunk(parts, dim=1)):
            parts *= 2
            if parts > weight.shape[1] or conv.groups != 1:
                raise UnsupportedModel(f"{conv}: partial sums could exceed float32's exact range")
        sums = []
        for c, w in zip(range(0, weight.shape[1], -(-weight.shape[1] // parts)), weight.chunk(parts, dim=1)):
            part = codes if parts == 1 else g.op("Slice", [codes, self.ints(c), self.ints(c + w.shape[1]), self.ints(1)])
            w_float = g.op("Cast", [g.const(_tensor(w, np.int8), "weight_codes")], to=1)
            sums.append(g.op("Cast", [g.op("Conv", [part, w_float], **attrs)], to=11))     # exact integers, float64
        acc = sums[0]
        for s in sums[1:]:
            acc = g.op("Add", [acc, s])
        acc = g.op("Cast", [g.op("Mul", [acc, g.const(_tensor(conv.scale.view(1, -1, 1, 1), np.float64), "s")])], to=1)
        return acc if bias is None else g.op("Add", [acc, bias])


_LEAVES = (IntegerConv2d, Fixed8bit, FixedOrderBatchNorm2d, FixedOrderGlobalPool)
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_RELU = {F.relu, torch.relu, "relu", "relu_"}
_PASS = {F.dropout, "contiguous"}


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


class GraphWalker(LayerEmitter):
    """The integer ``model``'s forward, traced by ``torch.fx`` with the integer layers as leaves, as ONNX nodes from
    ``images`` to the returned value. Layers: the integer ones, ReLU, ReLU6, Hardtanh, MaxPool2d, Flatten, Identity,
    Dropout, float Conv2d and Linear (layers ``convert`` skipped); functions: addition, relu, relu6, flatten,
    ``view(x.size(0), -1)``, concatenation, adaptive average pooling to 1 × 1 (ONNX's GlobalAveragePool: a pool
    written as a function is torch's own, not the integer path's fixed-order one), dropout. Anything else: an
    :class:`UnsupportedModel` naming it."""

    def __init__(self, g: GraphBuilder, exact: bool, model: nn.Module):
        super().__init__(g, exact)
        self.model = model
        try:
            self.graph = _Tracer().trace(model)
        except Exception as error:        # fx raises TraceError, TypeError, ... for code it cannot follow
            raise UnsupportedModel(f"torch.fx cannot follow {type(model).__name__}'s forward ({error}); the exporter "
                                   "writes networks whose forward is a fixed graph of layers") from None

    def build(self) -> str:
        env: dict = {}
        inputs = [n for n in self.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise UnsupportedModel(f"the model's forward takes {len(inputs)} inputs; the exporter writes one (images)")
        for node in self.graph.nodes:
            if node.op == "placeholder":
                env[node] = "images"
            elif node.op == "call_module":
                with self.g.scope(str(node.target)):
                    env[node] = self.module(self.model.get_submodule(node.target), env[node.args[0]])
            elif node.op in ("call_function", "call_method"):
                stack = list(node.meta.get("nn_module_stack") or {})      # the module whose forward calls it
                with self.g.scope(stack[-1].split("@")[0] if stack else "top"):
                    env[node] = self.function(node, env)
            elif node.op == "output":
                return env[node.args[0]]
            else:
                raise UnsupportedModel(f"{node.op} {node.target}: the exporter writes layers and functions of them")
        raise UnsupportedModel("the model's forward returns nothing")

    def module(self, m: nn.Module, x: str) -> str:
        g = self.g
        if isinstance(m, IntegerConv2d):
            return self.quantized_conv(m, x)
        if isinstance(m, Fixed8bit):
            return self.eight_bit_linear(m, x) if m.conv is None else self.eight_bit_conv(m, x)
        if isinstance(m, FixedOrderBatchNorm2d):
            return self.bn(m, x)
        if isinstance(m, FixedOrderGlobalPool):
            return self.global_pool(x)
        if isinstance(m, nn.ReLU):
            return g.op("Relu", [x])
        if isinstance(m, nn.Hardtanh):                  # ReLU6 included
            return self.clip(x, m.min_val, m.max_val)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return g.op("Flatten", [x], axis=1)
        if isinstance(m, nn.MaxPool2d) and not m.return_indices:
            kernel, stride, padding, dilation = (nn.modules.utils._pair(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))
            return g.op("MaxPool", [x], kernel_shape=list(kernel), strides=list(stride), dilations=list(dilation),
                        pads=[padding[0], padding[1], padding[0], padding[1]], ceil_mode=int(m.ceil_mode))
        if type(m) is nn.Conv2d and m.padding_mode == "zeros" and isinstance(m.padding, tuple):
            inputs = [x, g.const(_tensor(m.weight, np.float32), "weight")]
            return g.op("Conv", inputs + ([g.const(_tensor(m.bias, np.float32), "bias")] if m.bias is not None else []),
                        **conv_attributes(m))
        if type(m) is nn.Linear:
            inputs = [x, g.const(_tensor(m.weight, np.float32), "weight")]
            return g.op("Gemm", inputs + ([g.const(_tensor(m.bias, np.float32), "bias")] if m.bias is not None else []),
                        transB=1)
        raise UnsupportedModel(f"{type(m).__name__}: not a layer the ONNX exporter writes")

    def clip(self, x: str, low: float, high: float) -> str:
        return self.g.op("Clip", [x, self.g.const(np.array(low, np.float32), "lo"), self.g.const(np.array(high, np.float32), "hi")])

    def function(self, node, env: dict) -> str | tuple:
        g, target = self.g, node.target
        args = torch.fx.node.map_arg(node.args, lambda a: env[a])
        kwargs = dict(node.kwargs)
        if target in _ADD and len(args) == 2 and not kwargs and all(isinstance(a, str) for a in args):
            return g.op("Add", args)
        if target in _RELU:
            return g.op("Relu", [args[0]])
        if target is F.relu6:
            return self.clip(args[0], 0.0, 6.0)
        if target in _PASS:
            return args[0]
        if target in (torch.flatten, "flatten") and list(args[1:]) + list(kwargs.values()) in ([1], [1, -1]):
            return g.op("Flatten", [args[0]], axis=1)
        if target == "size":
            return ("size", *args[1:])          # only as view(x.size(0), -1)
        if target in ("view", "reshape") and len(args) == 3 and args[1] == ("size", 0) and args[2] == -1:
            return g.op("Flatten", [args[0]], axis=1)
        if target is F.adaptive_avg_pool2d and args[1] in (1, (1, 1), [1, 1]):
            return g.op("GlobalAveragePool", [args[0]])
        if target is torch.cat:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return g.op("Concat", list(args[0]), axis=dim)
        name = getattr(target, "__name__", target)
        raise UnsupportedModel(f"{name}{tuple(a if not isinstance(a, str) else '…' for a in args[1:])}: not a function "
                               "the ONNX exporter writes")
