"""Checkpoint files that cannot be used: unreadable, needing code to unpickle, bad thresholds or values,
metadata that contradicts the request, and quantized files that do not say their bitwidth."""
import numpy as np
import pytest
import torch

from apot_utils.fakequant.loading import load_into
from apot_utils.files import checkpoints
from apot_utils.fakequant.spec import ModelSpec


def write_bytes(path, content: bytes):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: write_bytes(p / "random.pth.tar", np.random.default_rng(0).bytes(4096)), "is not a PyTorch checkpoint"),
    (lambda p: write_bytes(p / "notes.pth.tar", b"these are my notes\n"), "is not a PyTorch checkpoint"),
    (lambda p: write_bytes(p / "empty.pth.tar", b""), "is empty (0 bytes)"),
    (lambda p: (p / "folder.pth.tar").mkdir() or p / "folder.pth.tar", "is a directory"),
    (lambda p: write_bytes(p / "cut.pth.tar", b"PK\x03\x04" + b"\0" * 60), "is not a readable checkpoint"),
])
def test_unreadable_checkpoints(make, message, tmp_path, cli):
    run = cli("validate", "--bit", "3", "--checkpoint", make(tmp_path), "--limit", "1")
    run.assert_clean_error(message)
    assert "weights_only" not in run.err and "will likely succeed" not in run.err and "unsafe" not in run.err


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_checkpoint_that_needs_code_is_refused_without_advice_to_unpickle(tmp_path, cli):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "x": Payload()}, path)
    run = cli("validate", "--bit", "3", "--checkpoint", path)
    run.assert_clean_error("only trusted checkpoints")
    assert "this ran while loading" not in run.out
    assert "weights_only=False" not in run.err and "will likely succeed" not in run.err


def quantized_checkpoint(tmp_path, name="model.pth.tar", meta=None, **values):
    """A random 3-bit ResNet-20 checkpoint with metadata; ``values``: tensors to set, '__' for '.'."""
    state = ModelSpec("cifar10", "resnet20", 3).build().state_dict()
    for key, value in values.items():
        key = key.replace("__", ".")
        state[key] = torch.full_like(state[key], value) if state[key].dim() else torch.tensor(value)
    path = tmp_path / name
    torch.save({"state_dict": state, "meta": {"dataset": "cifar10", "arch": "resnet20", "bit": 3, **(meta or {})}}, path)
    return path


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["layer2__0__conv1__act_alpha", "layer1__1__conv2__weight_alpha"])
def test_bad_alpha_is_refused_naming_the_layer(which, value, tmp_path, cli):
    path = quantized_checkpoint(tmp_path, **{which: value})
    model = ModelSpec("cifar10", "resnet20", 3).build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer, kind = which.replace("__", ".").rsplit(".", 1)
    with pytest.raises(checkpoints.CheckpointError, match=f"{kind} of layer {layer}"):
        load_into(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # nothing copied
    cli("validate", "--checkpoint", path, "--limit", "1").assert_clean_error(f"{kind} of layer {layer}", "finite positive")


@pytest.mark.parametrize("key", ["layer1__0__conv1__weight", "layer3__2__bn2__running_var", "fc__bias"])
def test_a_checkpoint_with_nan_is_refused(key, tmp_path, cli):
    """What a diverged run leaves: validate names the tensor instead of printing an accuracy."""
    path = quantized_checkpoint(tmp_path, **{key: float("nan")})
    cli("validate", "--checkpoint", path, "--limit", "1").assert_clean_error(key.replace("__", "."), "NaN or infinite")


def test_metadata_scheme_and_level_rule_are_checked(tmp_path, cli):
    path = quantized_checkpoint(tmp_path, meta={"scheme": "uniform"})
    cli("validate", "--checkpoint", path, "--scheme", "apot", "--limit", "1").assert_clean_error("holds a uniform model, not apot")
    path = quantized_checkpoint(tmp_path, "rule.pth.tar", meta={"scheme": "apot", "level_rule": "something-else"})
    cli("validate", "--checkpoint", path, "--limit", "1").assert_clean_error("level-set rule 'something-else'")


def test_directory_as_data(tmp_path, cli):
    cli("validate", "--bit", "3", "--checkpoint", quantized_checkpoint(tmp_path), "--data", tmp_path).assert_clean_error("is a directory")


def test_a_quantized_init_without_metadata_asks_for_its_bitwidth(ref, tmp_path, cli, tiny_train):
    """A re-saved release file (a plain state dict, like the authors' ImageNet files) has no metadata and its
    sha256 is not the release's: train --init cannot read its bitwidth and asks for it, then starts from it."""
    plain = tmp_path / "resaved_3bit.pth.tar"
    torch.save(checkpoints.read_checkpoint(ref("checkpoints/cifar10/res20_3bit.pth.tar"))["state_dict"], plain)
    run = cli(*tiny_train(tmp_path / "run", "--init", plain))
    run.assert_clean_error("does not record its bitwidth", "--init-bit")
    assert "full precision" not in run.err and not (tmp_path / "run").exists()
    run = cli(*tiny_train(tmp_path / "run", "--init", plain, "--init-bit", "3"))
    assert run.status == 0, run.err
    assert "=> initialized from" in run.out
