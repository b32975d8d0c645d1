"""Integer inference: a quantized layer as integer codes, an exact integer convolution, and the
same convolution as shifts and adds.

A b-bit level is an integer I (:func:`apot_utils.levels.integer_levels`) over the set's largest,
I_max. So a quantized convolution is

    conv(α_a · I_a / I_a,max, α_w · c_w / I_w,max) = s · conv(I_a, c_w),   s = α_a · α_w / (I_a,max · I_w,max)

with activation integers I_a ≥ 0, signed weight integers c_w = ±I_w, and conv(I_a, c_w) an exact
integer: one rescale by s per layer (per output channel with per-channel α), before BatchNorm.
An APoT weight integer has at most n set bits, so multiplying by it is at most n shifts and
n − 1 additions (:func:`shift_add_conv2d`).

:class:`IntegerConv2d` holds an exported layer and runs either as the fake-quantized layer
(``integer = False``: the float model's arithmetic) or in integers (``integer = True``). Its level
values are the release's float32 roundings (``levels='release'``: bit for bit the float model's)
or the exact ratios I / I_max in float64 (``levels='exact'``).

**The same predictions on every machine.** A float32 convolution sums in an order that depends on the
CPU's instruction set (oneDNN, BLAS and NNPACK pick other kernels), and a quantized network turns a
last-bit difference into another level wherever an activation sits within rounding of a midpoint. Inside
:func:`integer_arithmetic` nothing depends on such a choice: every quantized convolution is an exact
integer sum (:func:`exact_integer_conv2d`), and every rounding after it happens in one fixed order and
precision: the rescale by s, BatchNorm as three elementwise operations (:class:`FixedOrderBatchNorm2d`),
the residual additions, the average pool, and the 8-bit first convolution and last linear layer summed tap
by tap (:func:`fixed_order_conv2d`, :func:`fixed_order_linear`). Elementwise IEEE operations round the
same way on every machine, so the logits are the same bits on any CPU (tested under other oneDNN
instruction sets and with oneDNN off).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .levels import integer_levels, projection_order, weight_projection_order
from .quantize import normalize_weight, project, quantize_activation

FLOAT64_EXACT = 2**53     # integers up to this magnitude, and their sums, are exact in float64
FLOAT32_EXACT = 2**24     # the same in float32
LEVEL_VALUES = ("release", "exact")


def weight_codes(weight: torch.Tensor, alpha: torch.Tensor, bits: int, magnitudes_in_order: torch.Tensor,
                 stats_grad: bool = True) -> torch.Tensor:
    """b-bit codes of a layer's weights, as the quantizer projects them: the magnitude's index into the
    sorted (b − 1)-bit set in the low b − 1 bits, the sign in bit b − 1 (set only for non-zero
    negative weights). weight: [C_out, C_in, kh, kw]; alpha: 0-d or [C_out, 1, 1, 1].
    Returns int64 codes of the weight's shape."""
    with torch.no_grad():
        u = (normalize_weight(weight.detach(), stats_grad) / alpha.detach()).clamp(-1, 1)
        magnitude = project(u.abs(), magnitudes_in_order)
        index = torch.searchsorted(magnitudes_in_order.sort().values.to(u.dtype), magnitude.contiguous())
        negative = (u < 0) & (index > 0)
    return index | (negative.long() << (bits - 1))


def split_codes(codes: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(magnitude index, sign ±1) of b-bit weight codes."""
    index = codes & ((1 << (bits - 1)) - 1)
    sign = 1 - 2 * ((codes >> (bits - 1)) & 1)
    return index, sign


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes 0 .. 2^bits − 1 (any shape) as a uint8 bit stream, ``bits`` bits each, least significant first."""
    if int(codes.min()) < 0 or int(codes.max()) >= 1 << bits:
        raise ValueError(f"codes must be in 0..{(1 << bits) - 1}")
    stream = ((codes.reshape(-1, 1) >> torch.arange(bits)) & 1).flatten()
    stream = torch.cat([stream, stream.new_zeros(-len(stream) % 8)]).view(-1, 8)
    return (stream << torch.arange(8)).sum(1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` codes of :func:`pack_codes`'s stream, as int64."""
    stream = ((packed.long().reshape(-1, 1) >> torch.arange(8)) & 1).flatten()[:count * bits]
    if stream.numel() != count * bits:
        raise ValueError(f"{packed.numel()} bytes hold fewer than {count} codes of {bits} bits")
    return (stream.view(count, bits) << torch.arange(bits)).sum(1)


def _unfold(a: torch.Tensor, w: torch.Tensor, stride, padding, dtype: torch.dtype = torch.int64
            ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """im2col of a [N, C, H, W] for weights w [O, C, kh, kw]: columns [N, C·kh·kw, L] in ``dtype`` (exact:
    unfolding copies values; int64 columns are unfolded through float64, so integers must stay below 2^53)
    and the output shape [N, O, H', W']."""
    stride, padding = nn.modules.utils._pair(stride), nn.modules.utils._pair(padding)
    kh, kw = w.shape[2:]
    if dtype == torch.int64:
        if int(a.abs().max()) >= FLOAT64_EXACT:
            raise ValueError("activation integers too large to unfold exactly")
        cols = F.unfold(a.double(), (kh, kw), padding=padding, stride=stride).long()
    else:
        cols = F.unfold(a.to(dtype), (kh, kw), padding=padding, stride=stride)
    height = (a.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    width = (a.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    return cols, (len(a), len(w), height, width)


def integer_conv2d(a: torch.Tensor, w: torch.Tensor, stride=1, padding=0) -> torch.Tensor:
    """conv2d of int64 activations [N, C, H, W] with int64 weights [O, C, kh, kw] in int64 arithmetic
    (products and sums exact as long as they stay below 2^63). Returns int64 [N, O, H', W']."""
    cols, shape = _unfold(a, w, stride, padding)
    return (w.reshape(len(w), -1) @ cols).view(shape)          # int64 matmul


def power_of_two_parts(w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Signed integers w (any shape) as a list of (shift, sign) tensors, one per set bit:
    w = Σ_i sign_i · (1 << shift_i), with sign_i = 0 where w has fewer set bits than i + 1.
    The list is as long as the most set bits any element has (APoT: at most n)."""
    magnitude, sign = w.abs(), w.sign()
    parts = []
    while bool((magnitude > 0).any()):
        low = magnitude & -magnitude                   # lowest set bit
        present = low > 0
        shift = torch.where(present, torch.log2(low.clamp(min=1).double()).round().long(), 0)
        parts.append((shift, sign * present))
        magnitude = magnitude - low
    return parts


def shift_add_conv2d(a: torch.Tensor, w: torch.Tensor, stride=1, padding=0) -> torch.Tensor:
    """:func:`integer_conv2d` without a multiplier: each weight is split into its power-of-two parts
    (:func:`power_of_two_parts`), and every part adds or subtracts the activation shifted left by
    its exponent, on int64. a: int64 [N, C, H, W] >= 0; w: int64 [O, C, kh, kw]. Returns int64 [N, O, H', W']."""
    cols, shape = _unfold(a, w, stride, padding)          # [N, K, L]
    out = cols.new_zeros(len(a), len(w), cols.shape[2])
    for shift, sign in power_of_two_parts(w.reshape(len(w), -1)):          # [O, K] each
        for o in range(len(w)):
            shifted = cols << shift[o].view(1, -1, 1)                       # a · 2^shift, as shifts
            out[:, o] += (shifted * sign[o].view(1, -1, 1)).sum(1)          # ±: an add or a subtract
    return out.view(shape)


def accumulator_bound(a_max: int, w: torch.Tensor) -> int:
    """The largest |partial sum| a convolution of integer activations in [0, a_max] with integer
    weights w [O, C, kh, kw] can reach: a_max · max_o Σ |w[o]|."""
    return a_max * int(w.abs().flatten(1).sum(1).max())


def exact_in_float64(a_max: int, w: torch.Tensor) -> bool:
    """Whether a float64 convolution of integer activations in [0, a_max] with integer weights w is exact:
    every product and partial sum is an integer of magnitude at most :func:`accumulator_bound`, and
    float64 holds every integer below 2^53 exactly, whatever the order of the summation."""
    return accumulator_bound(a_max, w) < FLOAT64_EXACT


def exact_integer_conv2d(a: torch.Tensor, w: torch.Tensor, stride=1, padding=0, bound: int | None = None) -> torch.Tensor:
    """conv2d of integer activations a [N, C, H, W] (any dtype) with integer weights w [O, C, kh, kw], exact and
    fast: im2col (a copy) and one matrix product, in float32 when every partial sum stays below 2^24
    (``bound``: :func:`accumulator_bound`), else in float64 (below 2^53). A matrix product of integers that
    stay in that range is exact in any summation order; no transform of the operands (Winograd, FFT) is
    possible on this path, as it would be inside ``F.conv2d``. Returns the integers as a float tensor
    [N, O, H', W'] (float32 or float64)."""
    if bound is None:
        bound = accumulator_bound(int(a.max()), w)
    if bound >= FLOAT64_EXACT:
        raise ValueError(f"integer convolution bound {bound} exceeds float64's exact range")
    single = bound < FLOAT32_EXACT and torch.get_float32_matmul_precision() == "highest"
    dtype = torch.float32 if single else torch.float64
    cols, shape = _unfold(a, w, stride, padding, dtype)
    return (w.reshape(len(w), -1).to(dtype) @ cols).view(shape)


def fixed_order_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
                       padding=0) -> torch.Tensor:
    """conv2d of x [N, C, H, W] with weight [O, C, kh, kw], every output summed tap by tap in one order (input
    channel, kernel row, kernel column), each product and each partial sum rounded in x's dtype, then the
    bias added: the same bits on every machine. For the 8-bit first convolution (27 taps in a CIFAR ResNet,
    147 in an ImageNet one)."""
    cols, shape = _unfold(x, weight, stride, padding, x.dtype)                        # [N, C·kh·kw, L], a copy
    o = len(weight)
    w = weight.reshape(o, -1).to(x.dtype)
    acc = cols[:, 0:1, :] * w[:, 0].view(1, o, 1)
    for k in range(1, w.shape[1]):
        acc.add_(cols[:, k:k + 1, :] * w[:, k].view(1, o, 1))
    if bias is not None:
        acc.add_(bias.to(x.dtype).view(1, o, 1))
    return acc.view(shape)


def fixed_order_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear of x [N, K] with weight [O, K], summed over k = 0, 1, … in that order in x's dtype, then the bias."""
    w = weight.to(x.dtype)
    acc = x[:, 0:1] * w[:, 0]
    for k in range(1, w.shape[1]):
        acc.add_(x[:, k:k + 1] * w[:, k])
    return acc if bias is None else acc.add_(bias.to(x.dtype))


def fixed_order_global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over H and W of x [N, C, H, W], positions added in row-major order, then divided: [N, C, 1, 1]."""
    flat = x.flatten(2)
    acc = flat[..., 0].clone()
    for k in range(1, flat.shape[2]):
        acc.add_(flat[..., k])
    return acc.div_(flat.shape[2]).view(*x.shape[:2], 1, 1)


def folded_scale(act_alpha: torch.Tensor, weight_alpha: torch.Tensor, bits: int, scheme: str = "apot",
                 terms: int | None = None) -> torch.Tensor:
    """s = α_a · α_w / (I_a,max · I_w,max), float64, one value per weight α (1 per layer, or C_out)."""
    tops = int(integer_levels(bits, scheme, terms)[-1]) * int(integer_levels(bits - 1, scheme, terms)[-1])
    return (act_alpha.detach().double() * weight_alpha.detach().double() / tops).reshape(-1)


def in_order(sorted_values: torch.Tensor, listed: torch.Tensor) -> torch.Tensor:
    """``sorted_values`` (one per level of a set, ascending) rearranged to follow the order in which
    ``listed`` gives the set's levels (e.g. :func:`apot_utils.levels.projection_order`)."""
    return sorted_values[torch.searchsorted(listed.sort().values, listed)]


def _level_values(integers: torch.Tensor, release: torch.Tensor, levels: str) -> torch.Tensor:
    """The level values in ``release``'s order: the release's float32 ones, or I / I_max in float64."""
    return release if levels == "release" else in_order(integers.double() / integers[-1], release)


class IntegerConv2d(nn.Module):
    """An exported quantized convolution (no bias).

    codes: int64 b-bit weight codes [O, C, kh, kw] (:func:`weight_codes`); weight_alpha 0-d or
    [O, 1, 1, 1]; act_alpha 0-d; conv: stride and padding of the original layer; bits, scheme, terms:
    the level sets; levels: 'release' or 'exact' (module docstring). Input [N, C, H, W] >= 0.
    """

    def __init__(self, codes, weight_alpha, act_alpha, stride, padding, bits: int, scheme: str = "apot",
                 terms: int | None = None, levels: str = "release"):
        super().__init__()
        if levels not in LEVEL_VALUES:
            raise ValueError(f"levels must be one of {LEVEL_VALUES}, got {levels!r}")
        self.stride, self.padding, self.integer = stride, padding, False
        act_integers, weight_integers = integer_levels(bits, scheme, terms), integer_levels(bits - 1, scheme, terms)
        act_order = projection_order(bits, scheme, terms)
        act_values = _level_values(act_integers, act_order, levels)
        magnitudes = _level_values(weight_integers, weight_projection_order(bits, scheme, terms).sort().values, levels)
        index, sign = split_codes(codes, bits)
        dtype = act_values.dtype
        self.register_buffer("act_levels", act_values)                         # in projection (tie) order
        self.register_buffer("act_sorted", act_values.sort().values)
        self.register_buffer("act_integers", act_integers)
        self.register_buffer("act_alpha", act_alpha.detach().to(dtype).clone())
        self.register_buffer("weight_alpha", weight_alpha.detach().to(dtype).clone())
        # the fake-quantized weight, in the quantizer's order of operations: level · sign · α
        self.register_buffer("weight", magnitudes[index].mul(sign.to(dtype)).mul(self.weight_alpha))
        self.register_buffer("weight_int", weight_integers[index] * sign)     # c_w
        self.register_buffer("scale", folded_scale(act_alpha, weight_alpha, bits, scheme, terms))
        self.bound = accumulator_bound(int(act_integers[-1]), self.weight_int)
        if self.bound >= FLOAT64_EXACT:
            raise ValueError("this layer's integer convolution could overflow float64's exact range")

    def activation_integers(self, x: torch.Tensor) -> torch.Tensor:
        """I_a of inputs x [N, C, H, W]: the level each input projects to (as in the float model), as its integer."""
        q = project(x, self.act_levels.to(x.dtype), divisor=self.act_alpha.to(x.dtype))
        return self.act_integers[torch.searchsorted(self.act_sorted.to(x.dtype), q)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.integer:
            x = quantize_activation(x, self.act_alpha.to(x.dtype), self.act_levels.to(x.dtype))
            return F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        acc = exact_integer_conv2d(self.activation_integers(x), self.weight_int, self.stride, self.padding, self.bound)
        return acc.double().mul_(self.scale.view(1, -1, 1, 1)).to(x.dtype)      # exact integers, one rescale


class Fixed8bit(nn.Module):
    """The 8-bit first convolution or last linear layer from its codes: weight = code / 127 · max,
    computed in the input's dtype (the float model's arithmetic). codes: int64 of the weight's shape;
    weight_max: 0-d; conv: (stride, padding) for a convolution, None for the linear layer."""

    integer = False        # inside integer_arithmetic: summed in one fixed order (fixed_order_conv2d / _linear)

    def __init__(self, codes, weight_max, bias=None, conv: tuple | None = None):
        super().__init__()
        self.conv = conv
        self.register_buffer("codes", codes)
        self.register_buffer("weight_max", weight_max.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.codes.to(x.dtype).div(127).mul(self.weight_max.to(x.dtype))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.conv is None:
            return fixed_order_linear(x, weight, bias) if self.integer else F.linear(x, weight, bias)
        return fixed_order_conv2d(x, weight, bias, *self.conv) if self.integer else F.conv2d(x, weight, bias, *self.conv)


class FixedOrderBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d (eval) whose arithmetic inside :func:`integer_arithmetic` is fixed: (x − mean) · (γ / √(var + ε))
    + β, each an elementwise operation in x's dtype (ATen's kernel folds these differently per instruction set)."""
    integer = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.integer:
            return super().forward(x)
        shape = (1, -1, 1, 1)
        scale = self.weight.to(x.dtype) / (self.running_var.to(x.dtype) + self.eps).sqrt()
        return (x - self.running_mean.to(x.dtype).view(shape)).mul_(scale.view(shape)).add_(self.bias.to(x.dtype).view(shape))


class FixedOrderGlobalPool(nn.Module):
    """A global average pool (``AvgPool2d`` over the whole map, ``AdaptiveAvgPool2d(1)``): ``pool`` itself, inside
    :func:`integer_arithmetic` :func:`fixed_order_global_mean`. Input [N, C, H, W], output [N, C, 1, 1]."""
    integer = False

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(x)
        if not self.integer:
            return out
        if out.shape[2:] != (1, 1):
            raise ValueError(f"{self.pool} does not pool the whole {tuple(x.shape[2:])} map: not a global pool")
        return fixed_order_global_mean(x)


_FIXED_ORDER = (IntegerConv2d, Fixed8bit, FixedOrderBatchNorm2d, FixedOrderGlobalPool)


@contextmanager
def integer_arithmetic(model: nn.Module):
    """Inside the block every :class:`IntegerConv2d` of ``model`` computes in integers and the rest of an exported
    model in one fixed order (module docstring): the same logits on every machine."""
    layers = [m for m in model.modules() if isinstance(m, _FIXED_ORDER)]
    for m in layers:
        m.integer = True
    try:
        yield model
    finally:
        for m in layers:
            m.integer = False


def first_code_flip(model: nn.Module, images: torch.Tensor, index: int) -> dict | None:
    """Where float and integer arithmetic first send an activation of ``images[index]`` to different
    levels. Runs the batch ``images`` [N, 3, H, W] through ``model`` (from :func:`apot_utils.export.load_exported`)
    both ways, compares every :class:`IntegerConv2d`'s activation integers for that image in forward
    order, and returns None if none differ, else the first such layer, the number of flipped
    activations there, ``gap``: the largest |u_float − u_integer| among them (u = input / α, so in units
    of the clipping threshold; each flipped pair straddles a midpoint between two levels), and
    ``layer_gap``: the largest such difference over all of that layer's inputs for the image, the
    rounding noise between the two arithmetics up to there."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, IntegerConv2d)}
    seen: dict[bool, list] = {False: [], True: []}

    def capture(module, args):
        seen[module.integer].append((names[module], module, args[0][index].detach().clone()))

    handles = [m.register_forward_pre_hook(capture) for m in names]
    try:
        with torch.no_grad():
            model(images)
            with integer_arithmetic(model):
                model(images)
    finally:
        for h in handles:
            h.remove()
    for (name, module, x_float), (_, _, x_int) in zip(seen[False], seen[True]):
        flips = module.activation_integers(x_float) != module.activation_integers(x_int)
        if bool(flips.any()):
            alpha = module.act_alpha.to(x_int.dtype)
            difference = (x_float / alpha).double() - (x_int / alpha).double()
            return {"layer": name, "flips": int(flips.sum()), "gap": difference[flips].abs().max().item(),
                    "layer_gap": difference.abs().max().item()}
    return None


def layer_trace(model: nn.Module, images: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """One exported layer from codes to integers to shift-adds, on the inputs it receives for ``images``.

    Returns: ``act_integers`` I_a and ``weight_integers`` c_w (int64), ``scale`` s, the layer's float
    output ``fake`` (the fake-quantized arithmetic), ``integer`` (the exact integer convolution) and
    ``shift_add`` (the same without a multiplier). s · integer equals fake up to float rounding."""
    layer = model.get_submodule(name)
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    x = seen[0]
    with torch.no_grad():
        fake = layer(x)
    a = layer.activation_integers(x)
    exact = integer_conv2d(a, layer.weight_int, layer.stride, layer.padding)
    return {"act_integers": a, "weight_integers": layer.weight_int, "scale": layer.scale, "fake": fake,
            "integer": exact, "shift_add": shift_add_conv2d(a, layer.weight_int, layer.stride, layer.padding)}


def compare_with_float(exported_path, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 100) -> dict:
    """The exported model of ``exported_path`` run in integers against the fake-quantized model, on
    normalized ``images`` [N, 3, H, W] with ``labels`` [N]:

    - ``float64_rel_diff``: the largest |logit difference| / (largest |logit| of the image) between
      the integer path and the fake-quantized model on exact levels, both with float64 float parts;
    - ``float32_differences``: with float32 float parts (batches of ``batch_size``, as validation runs),
      each image whose integer-path prediction differs from the float32 model's, with its
      :func:`first_code_flip`;
    - ``top1_float32`` / ``top1_integer``: accuracies (%) of the float32 model and its integer path."""
    from .export import load_exported

    exact = load_exported(exported_path, levels="exact").double()
    with torch.no_grad():
        fake = exact(images.double())
        with integer_arithmetic(exact):
            ints = exact(images.double())
    rel = ((ints - fake).abs() / fake.abs().max(dim=1, keepdim=True).values).max().item()
    model = load_exported(exported_path)
    with torch.no_grad():
        f32 = torch.cat([model(b) for b in images.split(batch_size)])
        with integer_arithmetic(model):
            i32 = torch.cat([model(b) for b in images.split(batch_size)])
    differences = []
    for i in (f32.argmax(1) != i32.argmax(1)).nonzero().flatten().tolist():
        start = i // batch_size * batch_size
        differences.append({"image": i, "float32": int(f32[i].argmax()), "integer": int(i32[i].argmax()),
                             **(first_code_flip(model, images[start:start + batch_size], i - start) or {})})
    return {"float64_rel_diff": rel, "float32_differences": differences,
            "top1_float32": 100 * (f32.argmax(1) == labels).double().mean().item(),
            "top1_integer": 100 * (i32.argmax(1) == labels).double().mean().item()}


def shift_add_expression(a: int, w: int) -> str:
    """a · w written as the shifts and adds that compute it, e.g. ``5 · -6 = -(5 << 2) - (5 << 1) = -30``."""
    terms = [bit for bit in range(abs(w).bit_length()) if abs(w) >> bit & 1][::-1]
    sign = "-" if w < 0 else "+"
    body = " ".join(f"{sign} ({a} << {bit})" for bit in terms).removeprefix("+ ") if terms else "0"
    return f"{a} · {w} = {body.replace('- (', '-(', 1) if body.startswith('-') else body} = {a * w}"
