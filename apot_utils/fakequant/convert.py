"""APoT for any PyTorch CNN: :func:`convert` swaps every ``nn.Conv2d`` and ``nn.Linear`` of a model for its
quantized counterpart (:class:`~apot_utils.fakequant.layers.QuantConv2d`, :class:`~apot_utils.fakequant.layers.QuantLinear`,
and the release's 8-bit :class:`~apot_utils.fakequant.layers.FirstConv8bit` / :class:`~apot_utils.fakequant.layers.LastLinear8bit`
for the first and last layer), carrying the original weights, as torch.ao's ``prepare_qat`` swaps modules.
"""
from __future__ import annotations

import copy
import operator
from typing import Iterable, NamedTuple

import torch
import torch.fx
from torch import nn

from ..core.levels import FULL_PRECISION, projection_order, weight_projection_order
from ..core.reference import WEIGHT_NORMS
from .layers import FirstConv8bit, LastLinear8bit, QuantConv2d, QuantLinear, _QuantizedWeight, swap

# float layer type -> (its 8-bit first/last-layer counterpart, its b-bit counterpart)
LAYER_MAP = {nn.Conv2d: (FirstConv8bit, QuantConv2d), nn.Linear: (LastLinear8bit, QuantLinear)}

# modules with parameters that convert leaves as they are: normalization layers keep float statistics
PASSED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


class Conversion(NamedTuple):
    """What :func:`convert` returns: the converted copy and one row per replaced or kept layer
    (name, was, now, bit, signed)."""
    model: nn.Module
    rows: list[dict]

    def table(self) -> str:
        lines = [f"{'layer':32s} {'was':10s} {'now':15s} {'bit':>3s}  input"]
        for r in self.rows:
            lines.append(f"{r['name']:32s} {r['was']:10s} {r['now']:15s} {r['bit']:>3}  "
                         f"{'signed' if r['signed'] else 'unsigned' if r['bit'] not in (8, FULL_PRECISION) else 'float'}")
        return "\n".join(lines)


def negative_inputs(model: nn.Module, example: torch.Tensor) -> set[str]:
    """Names of the Conv2d and Linear layers of ``model`` that receive a negative value on ``example``
    (one forward, eval mode, no gradients)."""
    found, hooks = set(), []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(_m, inputs, name=name):
                if bool((inputs[0] < 0).any()):
                    found.add(name)
            hooks.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found


# ops whose output is >= 0 whatever their input, and ops that keep a tensor >= 0 when their inputs are
NON_NEGATIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softmax)
NON_NEGATIVE_FUNCTIONS = {torch.relu, torch.sigmoid, torch.nn.functional.relu, torch.nn.functional.relu6,
                          torch.nn.functional.sigmoid, torch.nn.functional.hardsigmoid, torch.softmax,
                          torch.nn.functional.softmax}
NON_NEGATIVE_METHODS = {"relu", "sigmoid", "softmax"}
KEEPS_SIGN_MODULES = (nn.Dropout, nn.Identity, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                      nn.AdaptiveMaxPool2d, nn.Upsample)
KEEPS_SIGN_FUNCTIONS = {torch.flatten, torch.cat, torch.add, operator.add, torch.mul, operator.mul, operator.getitem, torch.nn.functional.dropout,
                        torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.avg_pool2d,
                        torch.nn.functional.max_pool2d, torch.nn.functional.interpolate}
KEEPS_SIGN_METHODS = {"flatten", "view", "reshape", "contiguous", "permute", "transpose", "mean", "add", "mul"}


def _non_negative(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the value of ``node`` is >= 0 by construction: produced by a ReLU-like op, or by a sum, concatenation,
    pooling or reshaping of such values, with no negative constant (positional or keyword) and no op changing it
    in place. Anything else (the input, a BatchNorm, a convolution, a subtraction) may be negative."""
    if _mutated(node):
        return False
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, NON_NEGATIVE_MODULES):
            return True
        keeps = isinstance(module, KEEPS_SIGN_MODULES)
    elif node.op == "call_function":
        if node.target in NON_NEGATIVE_FUNCTIONS:
            return True
        keeps = node.target in KEEPS_SIGN_FUNCTIONS
    elif node.op == "call_method":
        if node.target in NON_NEGATIVE_METHODS:
            return True
        keeps = node.target in KEEPS_SIGN_METHODS
    else:
        return False
    tensors = _node_arguments(node)
    constants = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if node.target in (torch.add, operator.add, "add", torch.mul, operator.mul, "mul") and (
            "alpha" in node.kwargs or any(c < 0 for c in constants)):
        return False     # x + (negative constant), x * (negative constant), also as keywords; x + alpha * y
    return keeps and bool(tensors) and all(_non_negative(a, modules) for a in tensors)


IN_PLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ipow, operator.setitem}


def _mutated(node: torch.fx.Node) -> bool:
    """Whether an op changes ``node``'s tensor in place (``x.sub_(0.5)``, ``x -= 1``, ``x[...] = v``, an
    ``inplace=True`` function, any ``torch.*_`` function): what the graph records of its value no longer holds."""
    def in_place(name: str) -> bool:
        return name.endswith("_") and not name.endswith("__")

    for user in node.users:
        if user.kwargs.get("inplace") is True or user.target in IN_PLACE_FUNCTIONS:
            return True
        if user.op == "call_method" and in_place(user.target):
            return True
        if user.op == "call_function" and in_place(getattr(user.target, "__name__", "")):
            return True
    return False


def _node_arguments(node: torch.fx.Node) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def graph_signed_inputs(model: nn.Module) -> set[str]:
    """Names of the Conv2d and Linear layers of ``model`` whose input is not >= 0 by construction (no ReLU-like op
    in front, through pooling, reshaping, sums and concatenations), from the graph ``torch.fx.symbolic_trace``
    records; a model it cannot trace is refused (name the signed layers, or use signed='auto')."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as error:     # fx raises TraceError, TypeError, NotImplementedError, ... on dynamic code
        raise ValueError(f"signed='graph' needs a model torch.fx can trace ({type(error).__name__}: {error}); pass "
                         "signed='auto' with example inputs, or the names of the signed layers") from None
    modules = dict(model.named_modules())
    return {node.target for node in graph.nodes if node.op == "call_module"
            and isinstance(modules[node.target], (nn.Conv2d, nn.Linear))
            and not _non_negative(_node_arguments(node)[0], modules)}


class _LayerTracer(torch.fx.Tracer):
    """torch.fx's tracer, with every Conv2d and Linear a leaf (call_module) even where it is a subclass defined
    outside torch.nn (this package's full-precision QuantConv2d)."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear)) or super().is_leaf_module(m, qualified_name)


def layers_without_batchnorm(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Of the layers ``names`` of ``model``, those whose output does not go straight into a BatchNorm and nowhere
    else, from the graph ``torch.fx.symbolic_trace`` records, sorted; a model it cannot trace is refused."""
    try:
        graph = _LayerTracer().trace(model)
    except Exception as error:     # fx raises TraceError, TypeError, NotImplementedError, ... on dynamic code
        raise ValueError(f"convert checks on the model's graph that a BatchNorm follows every b-bit layer, and "
                         f"torch.fx cannot trace it ({type(error).__name__}: {error}); pass require_batchnorm=False "
                         "to convert it unchecked") from None
    modules = dict(model.named_modules())
    followed = {node.target for node in graph.nodes if node.op == "call_module" and len(node.users) == 1
                for user in node.users if user.op == "call_module" and user.args[:1] == (node,)
                and isinstance(modules[user.target], nn.modules.batchnorm._BatchNorm)}
    return sorted(set(names) - followed)


def _check_levels(bit: int, scheme: str, terms: int | None) -> None:
    """Refuse a bitwidth or n without a level set (the message lists the choices)."""
    if not (isinstance(bit, int) and 2 <= bit <= 8):
        raise ValueError(f"bit must be 2..8, got {bit!r}")
    projection_order(bit, scheme, terms)
    weight_projection_order(bit, scheme, terms)


def convert(model: nn.Module, bit: int, scheme: str = "apot", terms: int | None = None, per_channel: bool = False,
            first_last_bits: int | None = 8, skip: Iterable[str] = (), signed: str | bool | Iterable[str] | None = None,
            example: torch.Tensor | None = None, keep_unsupported: bool = False,
            weight_norm: str = "mean_std", require_batchnorm: bool = True) -> Conversion:
    """A copy of ``model`` with every ``nn.Conv2d`` (groups and depthwise included) and ``nn.Linear`` replaced
    by its b-bit APoT counterpart carrying the same weights (``model`` itself is not changed).

    bit, scheme, terms (n), per_channel: the level sets and weight α of every quantized layer (the sets of
    :mod:`apot_utils.core.levels`; one that does not exist is refused with the choices). first_last_bits: 8
    (default) makes the first and the last of those layers, in registration order, the release's 8-bit
    layers with unquantized input; None quantizes them too. skip: names of layers kept in full precision.
    signed: which layers get a signed input set (sign and b − 1 magnitude bits): 'auto' those that receive
    a negative value on ``example`` (inputs [N, ...], e.g. a few training images; required then), 'graph'
    those without a ReLU-like op in front (:func:`graph_signed_inputs`, no data), or a collection of names,
    or True / False for all; None (default): 'auto' when ``example`` is given, else 'graph'. keep_unsupported: leave other modules with parameters
    (ConvTranspose2d, Conv1d, …) in float; by default they are refused, listed. A subclass of nn.Conv2d or
    nn.Linear with its own forward is refused unless named in skip; padding modes (reflect, circular, …) are
    kept; a layer registered under several names is converted once and stays shared (its table row names
    them all). A full-precision model of this package (``ModelSpec(..., bit=32).build()``, the release's included)
    converts too: its 32-bit layers are quantized, its 8-bit first and last layers kept. weight_norm: each quantized layer's weight normalization
    (:func:`~apot_utils.core.reference.normalize_weight`). The α start at the layers' defaults: calibrate them
    (:func:`apot_utils.fakequant.ptq.calibrate`) or train them. A quantized layer computes with its normalized
    weights, as the release's do, so its output is its float output divided by about σ (the weights' standard
    deviation): a BatchNorm right after it absorbs that (calibrate carries its statistics over); a layer with no
    BatchNorm after it (a convolution with a bias feeding a ReLU, a squeeze-and-excitation layer) would keep the
    1/σ, its bias unscaled. ``require_batchnorm`` (default) refuses such layers, found on the model's graph
    (:func:`layers_without_batchnorm`), by name: keep them in float (``skip``), or pass False to quantize them
    anyway and fine-tune.

    The converted model records what was chosen, the signed layers included, as ``model.conversion`` (a dict of
    plain values): :func:`apot_utils.fakequant.loading.save_quantized` writes it into the file, and
    :func:`~apot_utils.fakequant.loading.load_quantized` converts a fresh copy of the float network the same way.
    """
    _check_levels(bit, scheme, terms)
    if weight_norm not in WEIGHT_NORMS:
        raise ValueError(f"weight_norm must be one of {WEIGHT_NORMS}, got {weight_norm!r}")
    names = dict(model.named_modules())
    canonical = {alias: next(n for n, m in names.items() if m is module)            # self.c = self.b: 'c' -> 'b'
                 for alias, module in model.named_modules(remove_duplicate=False) if alias not in names}
    skip = {canonical.get(name, name) for name in skip}
    if signed not in (None, "auto", "graph") and not isinstance(signed, bool):
        signed = {canonical.get(name, name) for name in signed}
    missing = sorted(skip - set(names))
    if missing:
        raise ValueError(f"skip names layers the model does not have: {missing}")
    quantized = [name for name, m in model.named_modules()
                 if isinstance(m, (QuantConv2d, QuantLinear)) and m.quantized]
    if quantized:
        raise ValueError(f"the model is already quantized ({', '.join(quantized[:3])}, …): convert a full-precision one")
    lazy = [name for name, m in model.named_modules() if isinstance(m, nn.modules.lazy.LazyModuleMixin)]
    if lazy:
        raise ValueError(f"{', '.join(lazy)} not initialized yet (lazy): run one forward before converting")
    targets = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # this package's full-precision models (the release's included): 32-bit QuantConv2d compute as nn.Conv2d, and
    # the 8-bit first and last layers are the ends convert makes anyway
    ends = [name for name, m in model.named_modules() if isinstance(m, (FirstConv8bit, LastLinear8bit))]
    if ends and (first_last_bits != 8 or not set(ends) <= {targets[0], targets[-1]}):
        raise ValueError(f"{', '.join(ends)}: 8-bit layers that are not the first and last of an 8-bit-ended "
                         "conversion (first_last_bits=8)")
    own_forward = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
                   if name in targets and name not in skip and not isinstance(m, _QuantizedWeight)
                   and type(m).forward not in (nn.Conv2d.forward, nn.Linear.forward)]
    if own_forward:
        raise ValueError(f"{', '.join(own_forward)} computes its own forward (a subclass of nn.Conv2d or nn.Linear): "
                         "a quantized layer would replace what it computes; pass its name in skip to keep it in float")
    aliases = {}           # a module registered under several names (self.c = self.b) is converted once, for all
    for name, m in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(name)
    others = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
              if name and not isinstance(m, (nn.Conv2d, nn.Linear, *PASSED)) and name not in skip
              and any(True for _ in m.parameters(recurse=False))]
    if others and not keep_unsupported:
        raise ValueError(f"convert cannot quantize {', '.join(others)}: pass their names in skip, or "
                         "keep_unsupported=True, to keep them in float")
    if not targets:
        raise ValueError("the model has no nn.Conv2d or nn.Linear to quantize")
    if signed is None:
        signed = "graph" if example is None else "auto"
    if example is not None and signed != "auto":
        raise ValueError(f"example inputs choose the signed layers only with signed='auto' (signed={signed!r} given)")
    if signed == "auto":
        if example is None:
            raise ValueError("signed='auto' chooses the signed layers from example inputs: pass example=<a batch>, "
                             "or name the signed layers (signed=[...], True or False)")
        signed_layers = negative_inputs(model, example)
    elif signed == "graph":
        signed_layers = graph_signed_inputs(model)
    elif isinstance(signed, bool):
        signed_layers = set(targets) if signed else set()
    else:
        signed_layers = set(signed)
        unknown = sorted(signed_layers - set(targets))
        if unknown:
            raise ValueError(f"signed names layers that convert does not quantize: {unknown}")
    eight_bit = {targets[0], targets[-1]} if first_last_bits == 8 else set()
    if first_last_bits not in (8, None):
        raise ValueError(f"first_last_bits must be 8 or None, got {first_last_bits!r}")
    unnormalized = layers_without_batchnorm(model, set(targets) - skip - eight_bit) if require_batchnorm else []
    if unnormalized:
        raise ValueError(f"{', '.join(unnormalized)}: no BatchNorm right after, so as {bit}-bit layers (which compute "
                         "with weights normalized by their σ) their outputs would be scaled by 1/σ and their bias "
                         "not: pass their names in skip to keep them in float, or require_batchnorm=False to "
                         "quantize them anyway and fine-tune")
    # the one map from a float layer type to its quantized counterparts (8-bit ends, b-bit middle): a new layer type
    # is one entry here and one class with from_float
    converted, rows, replacements = copy.deepcopy(model), [], {}
    for name in targets:
        old = names[name]
        if name in skip:
            rows.append({"name": name, "was": type(old).__name__, "now": type(old).__name__, "bit": FULL_PRECISION,
                         "signed": False})
            continue
        eight, quantized = LAYER_MAP[next(t for t in LAYER_MAP if isinstance(old, t))]
        if name in eight_bit:
            new, layer_bit, is_signed = eight.from_float(old), 8, False
        else:
            is_signed = name in signed_layers
            new = quantized.from_float(old, bit=bit, scheme=scheme, terms=terms, per_channel=per_channel, signed=is_signed)
            new.weight_norm, layer_bit = weight_norm, bit
        replacements[name] = new
        rows.append({"name": " = ".join(aliases[id(old)]), "was": type(old).__name__, "now": type(new).__name__,
                     "bit": layer_bit, "signed": is_signed})
    swap(converted, replacements)
    converted.__dict__.pop("spec", None)         # a ModelSpec's full-precision model: the copy is described below
    converted.conversion = {"bit": bit, "scheme": scheme, "terms": terms, "per_channel": per_channel,
                            "first_last_bits": first_last_bits, "skip": sorted(skip), "weight_norm": weight_norm,
                            "signed": sorted(signed_layers & set(targets) - skip - eight_bit),
                            "keep_unsupported": keep_unsupported, "require_batchnorm": require_batchnorm}
    return Conversion(converted, rows)
