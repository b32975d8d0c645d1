"""Exported integer models (.safetensors) are checked as strictly as checkpoints: a file whose tensors or
metadata are wrong is refused, naming the file and the tensor, before any image is validated."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from apot_utils.files import checkpoints
from apot_utils.commands.export import export_checkpoint
from apot_utils.integer.format import load_exported, tensors_digest


@pytest.fixture(scope="module")
def exported(ref, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "res20_3bit.safetensors"
    export_checkpoint("cifar10", "resnet20", 3, ref("checkpoints/cifar10/res20_3bit.pth.tar"), out, log=lambda line: None)
    return out


def rewritten(exported, tmp_path, change_tensors=None, change_meta=None, keep_digest=False):
    """A copy of the exported file with ``change_tensors(tensors)`` / ``change_meta(metadata strings)`` applied.
    Changed tensors get their digest recomputed (as a careful forger would), unless ``keep_digest``, so that
    each check below is reached."""
    with safe_open(str(exported), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if change_tensors:
        change_tensors(tensors)
        if not keep_digest:
            meta["tensors_sha256"] = tensors_digest(tensors)
    if change_meta:
        change_meta(meta)
    path = tmp_path / "changed.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


def set_(key, value):
    def change(tensors):
        tensors[key] = value(tensors[key]) if callable(value) else value
    return change


CASES = {
    "negated weight α": (set_("layer1.0.conv1.weight_alpha", lambda t: -t), None, "weight_alpha is [-"),
    "zero activation α": (set_("layer2.0.conv1.act_alpha", lambda t: t * 0), None, "layer2.0.conv1.act_alpha is [0.0]; it must be positive"),
    "8-bit code beyond 127": (set_("conv1.weight_codes", lambda t: t.to(torch.int16).index_fill(0, torch.tensor([0]), 200)), None,
                              "conv1.weight_codes reach 200"),
    "weight_max of 0": (set_("fc.weight_max", lambda t: t * 0), None, "fc.weight_max is [0.0]"),
    "weight_max NaN": (set_("fc.weight_max", lambda t: t * float("nan")), None, "fc.weight_max holds values that are not finite"),
    "permuted weight_shape": (set_("layer1.0.conv2.weight_shape", lambda t: t[[1, 0, 2, 3]].clone() * 0 + torch.tensor([16, 16, 1, 9])), None,
                              "layer1.0.conv2.weight_shape is [16, 16, 1, 9], the model's layer is [16, 16, 3, 3]"),
    "missing tensor": (lambda t: t.pop("layer3.2.bn2.running_var"), None, "lacks tensor 'layer3.2.bn2.running_var'"),
    "BatchNorm of another width": (set_("bn1.weight", lambda t: t[:8].clone()), None, "bn1.weight has shape (8,), the model needs (16,)"),
    "missing arch": (None, lambda m: m.pop("arch"), "its metadata lacks arch"),
    "metadata not JSON": (None, lambda m: m.update(bit="three"), "its metadata 'bit' is not JSON"),
    "metadata nested too deeply": (None, lambda m: m.update(recipe="[" * 100_000), "its metadata 'recipe' is nested too deeply"),
    "bit that does not match the levels": (None, lambda m: m.update(bit="4"), "are not those of a 4-bit apot model"),
    "unknown architecture": (None, lambda m: m.update(arch=json.dumps("resnet7")),
                             ("describes no model this version builds", "is a 3-bit resnet7 cifar10 model, not resnet20 cifar10")),
}


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_export_is_refused(case, exported, tmp_path, cli):
    change_tensors, change_meta, message = CASES[case]
    message, cli_message = message if isinstance(message, tuple) else (message, message)
    path = rewritten(exported, tmp_path, change_tensors, change_meta)
    with pytest.raises(checkpoints.CheckpointError) as refused:
        load_exported(path)
    assert message in str(refused.value) and str(path) in str(refused.value)
    run = cli("validate", "--checkpoint", path, "--limit", "10")
    run.assert_clean_error(cli_message)
    assert "Prec" not in run.out and "None-bit" not in run.err


def test_an_edited_tensor_is_refused_by_the_files_digest(exported, tmp_path, cli):
    """α times 5 is still a valid threshold: only the digest written at export tells the file was edited."""
    path = rewritten(exported, tmp_path, set_("layer1.0.conv1.weight_alpha", lambda t: t * 5), keep_digest=True)
    run = cli("validate", "--checkpoint", path, "--limit", "10")
    run.assert_clean_error("its tensors are not the ones it was exported with", "edited or damaged")
    assert "Prec" not in run.out


def test_the_export_itself_loads(exported):
    assert len(list(load_exported(exported).modules())) > 20


def test_a_file_without_the_digest_is_refused_unless_asked(exported, tmp_path, cli):
    """Deleting the digest must not be a way around it: α × 5 without a digest is refused; asked, it loads."""
    path = rewritten(exported, tmp_path, set_("layer1.0.conv1.weight_alpha", lambda t: t * 5),
                     change_meta=lambda meta: meta.pop("tensors_sha256"), keep_digest=True)
    cli("validate", "--checkpoint", path, "--limit", "1").assert_clean_error("records no sha256")
    model = load_exported(path, require_digest=False)
    assert model.layer1[0].conv1.weight_alpha.item() > 0
