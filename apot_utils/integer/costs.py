"""What a quantized model costs: multiplications against shift-adds, storage, and the paper's FixOPS.

Counting rules (per multiply-accumulate, MAC, of a convolution or linear layer):
- full precision: one multiplication and one addition;
- APoT weights: the activation integer times a weight integer with at most n_w set bits is n_w
  shifts and n_w − 1 additions (``shift_adds`` counts the n_w shifted copies); with APoT activations
  too, the product of an n_a-term and an n_w-term number is n_a·n_w power-of-two partial products
  (``partial_products``); uniform b-bit operands are treated the same way with one term a bit;
- FixOPS (the paper's Table 3): a MAC of b_w-bit weights and b_a-bit activations counts b_w·b_a/64
  (an 8-bit × 8-bit MAC, the first layer, counts 1, and so does a full-precision one); an APoT MAC
  counts 3/4 of the uniform one. The 3/4 is not derived here: it is the factor the paper's own
  numbers imply (its ResNet-18 APoT rows are 0.75 of its uniform rows, layer for layer).

Per input activation of a quantized layer, requantization: its nearest of the L levels (2^b unsigned, 2^b − 1
signed: ± the (b−1)-bit magnitudes) takes L − 1 comparisons with the decision thresholds (``act comparisons``; a binary search needs only b of them, at the
price of data-dependent branches).
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.levels import FULL_PRECISION, max_set_bits
from ..fakequant.layers import FirstConv8bit, LastLinear8bit, QuantConv2d, QuantLinear

APOT_FIXOPS_FACTOR = 0.75


def layer_rows(model: nn.Module, image_shape: tuple[int, int, int]) -> list[dict]:
    """One row per convolution or linear layer of ``model`` for one image of ``image_shape`` (C, H, W):
    name, bits (weights/activations), MACs, weight and activation terms (most set bits of a level's
    integer), shift-adds, partial products, the comparisons that requantize the layer's input
    activations (quantized layers), and weight storage in bytes (packed codes; float32 at full precision)."""
    rows, hooks = [], []

    def count(name):
        def hook(module, args, out):
            macs = out.numel() * module.weight[0].numel()        # per output element: C_in/groups · kh · kw
            comparisons = None
            if isinstance(module, (QuantConv2d, QuantLinear)) and module.quantized:
                b, n_w = module.bit, max_set_bits(module.bit - 1, module.scheme, module.terms)
                # a signed input: sign and the weights' (b-1)-bit magnitudes, 2^b - 1 levels (one zero)
                n_a = n_w if module.signed else max_set_bits(module.bit, module.scheme, module.terms)
                bits, weight_bytes = (b, b), module.weight.numel() * b / 8
                comparisons = args[0].numel() * (2**b - (2 if module.signed else 1))
            elif isinstance(module, (FirstConv8bit, LastLinear8bit)):     # 8-bit codes: an 8-bit multiplier
                bits, n_w, n_a, weight_bytes = (8, 8), None, None, module.weight.numel()
            else:
                bits, n_w, n_a, weight_bytes = (FULL_PRECISION, FULL_PRECISION), None, None, module.weight.numel() * 4
            rows.append({"layer": name, "bits w/a": f"{bits[0]}/{bits[1]}", "MACs": macs,
                         "weight terms": n_w, "act terms": n_a,
                         "shift-adds": None if n_w is None else macs * n_w,
                         "partial products": None if n_w is None else macs * n_w * n_a,
                         "act comparisons": comparisons,
                         "weight bytes": weight_bytes, "_bits": bits,
                         "_apot": isinstance(module, (QuantConv2d, QuantLinear)) and module.quantized and module.scheme == "apot"})
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(count(name)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *image_shape))
    finally:
        for h in hooks:
            h.remove()
    return rows


def fixops(rows: list[dict]) -> float:
    """The model's FixOPS under the rule of the module docstring, from :func:`layer_rows`."""
    total = 0.0
    for row in rows:
        b_w, b_a = row["_bits"]
        per_mac = 1.0 if b_w == FULL_PRECISION else b_w * b_a / 64
        total += row["MACs"] * per_mac * (APOT_FIXOPS_FACTOR if row["_apot"] else 1.0)
    return total


def totals(rows: list[dict]) -> dict:
    """Sums over :func:`layer_rows`: multiplications (MACs of the layers that keep a multiplier: full
    precision and the 8-bit first and last layers), shift-adds and partial products of the others,
    activation comparisons, weight bytes, and FixOPS."""
    def total(key):
        return sum(r[key] for r in rows if r[key] is not None)
    return {"MACs": total("MACs"), "multiplications": sum(r["MACs"] for r in rows if r["shift-adds"] is None),
            "shift-adds": total("shift-adds"), "partial products": total("partial products"),
            "act comparisons": total("act comparisons"),
            "weight bytes": total("weight bytes"), "FixOPS": fixops(rows)}

