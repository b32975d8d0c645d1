"""The authors' ImageNet checkpoints as they saved them: a state dict in the release's key layout
(``reference/imagenet_resnet18_release_keys.json``), wrapped as their ``main.py`` writes a run
(``{'state_dict': …}``) or as the files it hands out for progressive initialization (``{'model': …}``, read by
its ``--pretrained``). ``validate``'s model of such a file must give the logits of the release's ImageNet
arithmetic, written out below from its ``ImageNet/models/quant_layer.py`` and ``resnet.py``:

- levels: ``build_power_value(B)``: the sums of one element of each base list, ``list(set(...))`` as float32
  (the set's order is the tie order of the argmin), times ``1 / max`` in float32;
- a quantized convolution: weights normalized ``w.add(-mean).div(std)``; above 2 bits divided by
  ``weight_alpha``, clipped to [-1, 1] and projected (sign apart) onto the (b − 1)-bit set, at 2 bits rounded
  to {-1, 0, 1} (its "calibrated" quantizer); activations divided by ``act_alpha``, clipped to [0, 1],
  projected onto the b-bit set; each projection written ``(xhard - x).detach() + x`` and multiplied back by α;
- the first conv and the fc: ``w.div(max).mul(127).round().div(127).mul(max)``, again through
  ``(q - w).detach() + w``; full precision (32 bits): plain convolutions, the two 8-bit layers as above.
The synthetic weights are random; BatchNorm statistics are those of random images, so that activations
spread over the levels."""
import json

import pytest
import torch
import torch.nn.functional as F

from apot_utils.fakequant.layers import frozen_weights
from apot_utils.fakequant.spec import ModelSpec
from apot_utils.fakequant.loading import load_model

# build_power_value's base lists (additive), by bitwidth B, in the order the release appends them.
RELEASE_BASES = {
    2: ([0.0, 2**-1, 2**-2, 2**-3],),
    3: ([0.0, 2**-1, 2**-2, 2**-4], [0.0, 2**-3]),
    4: ([0.0, 2**-1, 2**-3, 2**-5], [0.0, 2**-2, 2**-4, 2**-6]),
    5: ([0.0, 2**-1, 2**-3, 2**-6], [0.0, 2**-2, 2**-4, 2**-7], [0.0, 2**-5]),
    6: ([0.0, 2**-1, 2**-4, 2**-7], [0.0, 2**-2, 2**-5, 2**-8], [0.0, 2**-3, 2**-6, 2**-9]),
}


def release_levels(bits: int) -> torch.Tensor:
    sums = [0.0]
    for base in RELEASE_BASES[bits]:
        sums = [s + b for s in sums for b in base]
    values = torch.tensor(list(set(sums)), dtype=torch.float32)
    return values.mul(1.0 / torch.max(values))


def release_project(data: torch.Tensor, levels: torch.Tensor, signed: bool) -> torch.Tensor:
    x = data.reshape(-1)
    magnitude = x.abs() if signed else x
    index = (magnitude.unsqueeze(0) - levels.unsqueeze(1)).abs().min(dim=0)[1]
    hard = levels[index].view(data.shape)
    if signed:
        hard = hard.mul(data.sign())
    return (hard - data) + data          # the release's (xhard - x).detach() + x, as forward values


def release_conv(state, name, x, bit, stride, padding):
    w = state[f"module.{name}.weight"]
    if bit == 32:
        return F.conv2d(x, w, None, stride, padding)
    w = w.add(-w.mean()).div(w.std())
    w_alpha, a_alpha = state[f"module.{name}.weight_alpha"], state[f"module.{name}.act_alpha"]
    if bit > 2:
        w = release_project((w / w_alpha).clamp(-1, 1), release_levels(bit - 1), signed=True) * w_alpha
    else:
        w = w.div(w_alpha).clamp(-1, 1).round().mul(w_alpha)
    x = release_project((x / a_alpha).clamp(0, 1), release_levels(bit), signed=False) * a_alpha
    return F.conv2d(x, w, None, stride, padding)


def release_8bit(w):
    top = w.max()
    q = w.div(top).mul(127).round().div(127).mul(top)
    return (q - w) + w


def release_bn(state, name, x):
    s = lambda key: state[f"module.{name}.{key}"]
    return F.batch_norm(x, s("running_mean"), s("running_var"), s("weight"), s("bias"), False, 0.0, 1e-5)


def release_resnet18(state: dict, bit: int, x: torch.Tensor) -> torch.Tensor:
    x = F.conv2d(x, release_8bit(state["module.conv1.weight"]), None, 2, 3)
    x = F.max_pool2d(F.relu(release_bn(state, "bn1", x)), 3, 2, 1)
    for stage in range(1, 5):
        for block in range(2):
            name = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.relu(release_bn(state, f"{name}.bn1", release_conv(state, f"{name}.conv1", x, bit, stride, 1)))
            out = release_bn(state, f"{name}.bn2", release_conv(state, f"{name}.conv2", out, bit, 1, 1))
            if f"module.{name}.downsample.0.weight" in state:
                x = release_bn(state, f"{name}.downsample.1", release_conv(state, f"{name}.downsample.0", x, bit, stride, 0))
            x = F.relu(out + x)
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return F.linear(x, release_8bit(state["module.fc.weight"]), state["module.fc.bias"])


@pytest.fixture(scope="module")
def release_keys(ref):
    return json.loads(ref("reference/imagenet_resnet18_release_keys.json").read_text())


def synthetic_release_state(keys: dict, bit: int, seed: int) -> dict:
    """A state dict in the release's layout, every key and shape of ``keys``: random weights and α, BatchNorm
    statistics of random images; at 32 bits the thresholds the release keeps but never uses (6.0 and 3.0)."""
    torch.manual_seed(seed)
    model = ModelSpec("imagenet", "resnet18", bit).build()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None                      # cumulative averages over the calibration batches
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("act_alpha"):
                p.fill_(float(torch.empty(()).uniform_(1.0, 3.0)))
            elif name.endswith("weight_alpha"):
                p.fill_(float(torch.empty(()).uniform_(1.5, 3.0)))
            elif name.endswith("bn2.weight") or name.endswith("bias"):
                p.uniform_(0.2, 0.6)
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, 96, 96))
    ours = model.state_dict()
    unused = {"act_alpha": torch.tensor(6.0), "weight_alpha": torch.tensor(3.0)}
    state = {}
    for key, shape in keys.items():
        short = key.removeprefix("module.")
        value = ours[short] if short in ours else unused[short.rsplit(".", 1)[1]]
        assert list(value.shape) == shape, key
        state[key] = value.clone()
    return state


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
@pytest.mark.parametrize("bit", [2, 3, 4, 5, 32])
def test_release_layout_files_give_the_releases_logits(release_keys, tmp_path, bit, wrapper):
    state = synthetic_release_state(release_keys, bit, seed=bit)
    path = tmp_path / f"res18_{bit}bit.pth.tar"
    content = {"model": state} if wrapper == "model" else {"epoch": 90, "arch": "resnet18", "state_dict": state,
                                                           "best_acc1": torch.tensor(70.0), "optimizer": {}}
    torch.save(content, path)
    model = load_model("imagenet", "resnet18", bit, path, log=lambda line: None).eval()
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with frozen_weights(model), torch.inference_mode():           # as validate runs it
        ours = model(images)
    with torch.no_grad():
        release = release_resnet18(state, bit, images)
    assert torch.equal(ours, release)
    assert ours.std() > 0 and not ours.isnan().any()


def test_trained_thresholds_in_a_full_precision_file_are_still_refused(release_keys, tmp_path):
    state = synthetic_release_state(release_keys, 32, seed=1)
    state["module.layer1.0.conv1.act_alpha"] = torch.tensor(2.5)        # trained: a quantized model's file
    torch.save({"model": state}, tmp_path / "res18.pth.tar")
    with pytest.raises(Exception, match="clipping thresholds"):
        load_model("imagenet", "resnet18", 32, tmp_path / "res18.pth.tar", log=lambda line: None)
