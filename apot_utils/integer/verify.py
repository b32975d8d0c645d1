"""Checks of an integer model against its float arithmetic: where the two first send an activation to
different levels (:func:`first_code_flip`), one layer traced from codes to shift-adds (:func:`layer_trace`),
and a whole exported model compared on images (:func:`compare_with_float`)."""
from __future__ import annotations

import torch
from torch import nn

from ..fakequant.capture import capturing_inputs, input_to
from .arithmetic import integer_conv2d, shift_add_conv2d
from .format import load_exported
from .layers import IntegerConv2d, integer_arithmetic


def first_code_flip(model: nn.Module, images: torch.Tensor, index: int) -> dict | None:
    """Where float and integer arithmetic first send an activation of ``images[index]`` to different
    levels. Runs the batch ``images`` [N, 3, H, W] through ``model`` (from :func:`apot_utils.integer.format.load_exported`)
    both ways, compares every :class:`IntegerConv2d`'s activation integers for that image in forward
    order, and returns None if none differ, else the first such layer, the number of flipped
    activations there, ``gap``: the largest |u_float − u_integer| among them (u = input / α, so in units
    of the clipping threshold; each flipped pair straddles a midpoint between two levels), and
    ``layer_gap``: the largest such difference over all of that layer's inputs for the image, the
    rounding noise between the two arithmetics up to there."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, IntegerConv2d)}
    seen: dict[bool, list] = {False: [], True: []}

    def record(module, x):
        seen[module.integer].append((names[module], module, x[index].clone()))

    with capturing_inputs(names, record), torch.no_grad():
        model(images)
        with integer_arithmetic(model):
            model(images)
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
    x = input_to(model, layer, images)
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
    exact = load_exported(exported_path, level_values="exact").double()
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


