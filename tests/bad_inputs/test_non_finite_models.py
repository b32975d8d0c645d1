"""Models that pass every load check and still compute NaN or infinity: validation names the first layer where
it appears instead of printing an accuracy, and export and quantize never write such a model (issue 37, items
1 and 2); a file the tool writes is one its own loader takes back."""
import pytest
import torch

from apot_utils.files import checkpoints

pytestmark = pytest.mark.slow


def edited_release(ref, tmp_path, name, edit, bit=3):
    """The released ``bit``-bit ResNet-20 with ``edit(state)`` applied, saved with its metadata."""
    content = checkpoints.read_checkpoint(ref(f"checkpoints/cifar10/res20_{bit}bit.pth.tar"))
    state = checkpoints.to_model_keys(content["state_dict"])
    if bit == 32:
        state = {k: v for k, v in state.items() if not k.endswith("alpha")}
    edit(state)
    path = tmp_path / name
    torch.save({"state_dict": state, "meta": {"dataset": "cifar10", "arch": "resnet20", "bit": bit}}, path)
    return path


def zero_fc(state):
    state["fc.weight"].zero_()                        # the 8-bit fc scales by max(w) = 0: 0 / 0


def huge_batchnorm_weight(state):
    state["layer1.0.bn1.weight"].fill_(3e38)          # finite, but in full precision its products overflow to inf


EDITS = {"zero fc": (zero_fc, "fc", 3), "huge BatchNorm weight": (huge_batchnorm_weight, "layer1.0.bn1", 32)}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_validate_names_the_first_non_finite_layer_instead_of_an_accuracy(case, ref, tmp_path, cli):
    edit, layer, bit = EDITS[case]
    path = edited_release(ref, tmp_path, "edited.pth.tar", edit, bit)
    run = cli("validate", "--checkpoint", path, "--data", ref("cifar10/test_first1000_lossless.npz"), "--limit", "100")
    run.assert_clean_error("not finite", f"first in {layer}")
    assert "* Prec" not in run.out


def constant_conv(state):
    state["layer2.0.conv1.weight"].fill_(0.05)       # std 0: the weight normalization divides by (about) 0


def test_a_constant_quantized_weight_is_refused_on_loading(ref, tmp_path, cli):
    """Its normalization (w − mean) / std divides rounding noise by about 0: NaN, or finite nonsense."""
    path = edited_release(ref, tmp_path, "constant.pth.tar", constant_conv)
    cli("validate", "--checkpoint", path, "--limit", "1").assert_clean_error("layer2.0.conv1.weight", "constant")


def test_a_negative_running_variance_is_refused_on_loading(ref, tmp_path, cli):
    path = edited_release(ref, tmp_path, "negvar.pth.tar", lambda s: s["layer3.2.bn2.running_var"].mul_(-1))
    cli("validate", "--checkpoint", path, "--limit", "1").assert_clean_error("layer3.2.bn2.running_var", "negative")


@pytest.mark.parametrize("edit, message", [(zero_fc, "not finite"), (constant_conv, "constant")])
@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_export_refuses_a_model_that_computes_nan_and_writes_nothing(edit, message, fmt, ref, tmp_path, cli):
    path = edited_release(ref, tmp_path, "edited.pth.tar", edit)
    out = tmp_path / f"out.{fmt}"
    cli("export", "--checkpoint", path, "--format", fmt, "--out", out).assert_clean_error(message)
    assert list(tmp_path.iterdir()) == [path]             # no file, no temporary


def test_onnx_logits_made_nan_are_an_error(ref, tmp_path, cli):
    import onnx
    from onnx import helper, numpy_helper
    import numpy as np

    ref("checkpoints/cifar10/res20_3bit.pth.tar")        # the export reads the released file: skip without it
    good = tmp_path / "good.onnx"
    assert cli("export", "--bit", "3", "--format", "onnx", "--variant", "float", "--out", good).status == 0
    graph = onnx.load(good)
    output = graph.graph.output[0].name
    graph.graph.initializer.append(numpy_helper.from_array(np.array(float("nan"), dtype=np.float32), "nan_factor"))
    for node in graph.graph.node:
        for i, name in enumerate(node.output):
            if name == output:
                node.output[i] = "logits_before"
    graph.graph.node.append(helper.make_node("Mul", ["logits_before", "nan_factor"], [output]))
    bad = tmp_path / "bad.onnx"
    onnx.save(graph, bad)
    run = cli("validate", "--checkpoint", bad, "--data", ref("cifar10/test_first1000_lossless.npz"), "--limit", "100")
    run.assert_clean_error("not finite")
    assert "* Prec" not in run.out


def test_bit_rot_inside_a_checkpoint_is_named(ref, tmp_path, cli):
    """50 flipped bytes inside a tensor of a torch zip checkpoint: the zip's CRC names the member."""
    path = tmp_path / "rotten.pth.tar"
    content = checkpoints.read_checkpoint(ref("checkpoints/cifar10/res20_3bit.pth.tar"))   # the release: legacy pickle
    torch.save({"state_dict": content["state_dict"], "meta": content["meta"]}, path)        # a zip, as torch saves now
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(50):
        data[middle + 7 * i] ^= 0x5A
    path.write_bytes(bytes(data))
    cli("validate", "--bit", "3", "--checkpoint", path, "--limit", "1").assert_clean_error("CRC")


@pytest.mark.parametrize("extra", ["module.fc.weight", "layer1.0.conv1.weight_quant.wgt_alpha"])
def test_duplicate_keys_after_renaming_are_refused(extra, ref, tmp_path, cli):
    content = checkpoints.read_checkpoint(ref("checkpoints/cifar10/res20_3bit.pth.tar"))
    state = checkpoints.to_model_keys(content["state_dict"])
    renamed = checkpoints.to_model_keys({extra: torch.zeros(1)})
    state[extra] = torch.zeros_like(state[next(iter(renamed))])
    path = tmp_path / "dup.pth.tar"
    torch.save({"state_dict": state, "meta": {"dataset": "cifar10", "arch": "resnet20", "bit": 3}}, path)
    cli("validate", "--checkpoint", path, "--limit", "1").assert_clean_error("both", extra)


@pytest.mark.parametrize("meta, message", [
    ("not a dict", "meta"), ({"dataset": "cifar10", "arch": "resnet20", "bit": "3"}, "bit"),
    ({"dataset": "cifar10", "arch": "resnet20", "bit": 3, "epoch": -3}, "epoch"),
    ({"dataset": "cifar10", "arch": "resnet20", "bit": 3, "epoch": "1"}, "epoch"),
    ({"dataset": 5, "arch": "resnet20", "bit": 3}, "dataset"),
    ({"dataset": "cifar10", "arch": "resnet20", "bit": 3, "per_channel": "yes"}, "per_channel"),
])
def test_metadata_fields_are_type_checked(meta, message, ref, tmp_path, cli):
    state = checkpoints.read_checkpoint(ref("checkpoints/cifar10/res20_3bit.pth.tar"))["state_dict"]
    path = tmp_path / "meta.pth.tar"
    torch.save({"state_dict": state, "meta": meta}, path)
    cli("validate", "--bit", "3", "--checkpoint", path, "--limit", "1").assert_clean_error("meta", message)
