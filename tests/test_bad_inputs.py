"""Bad input and faults: every try gives one clear error line and exit status 2 (or the documented
behaviour) and writes nothing. The CLI runs in this process (``main(argv)``) except where a crash
could take pytest down with it; then it runs in a subprocess."""
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from apot_utils import checkpoints, data
from apot_utils.__main__ import main
from apot_utils.levels import available_terms, level_set, projection_order, weight_projection_order
from apot_utils.models import build_model
from apot_utils.quantize import argmin_project, project


def run_cli(argv, capsys):
    """(exit status, stderr) of ``python -m apot_utils argv``, run in this process."""
    try:
        status = main(argv)
    except SystemExit as stop:          # argparse's own errors
        status = stop.code
    err = capsys.readouterr().err
    return status, err


def assert_clean_error(status, err, *fragments):
    assert status == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith(("error:", "python -m apot_utils"))]
    assert lines, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ---------------------------------------------------------------- counts (argparse) -----------

@pytest.mark.parametrize("argv", [
    ["validate", "--limit", "0"], ["validate", "--limit", "-5"], ["validate", "--batch-size", "0"],
    ["validate", "--batch-size", "-1"], ["train", "--max-steps", "0"], ["train", "--subset", "0"],
    ["train", "--batch-size", "0"], ["train", "--epochs", "0"], ["quantize", "--bit", "5", "--calib", "0", "--out", "x"],
])
def test_counts_below_one_are_refused(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = run_cli(argv, capsys)
    assert_clean_error(status, err, "must be at least 1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs", [dict(limit=0), dict(limit=-5), dict(batch_size=0), dict(batch_size=-1)])
def test_counts_below_one_are_refused_by_the_api(kwargs):
    from apot_utils.pipeline import run_validation

    with pytest.raises(ValueError, match="at least 1"):
        run_validation(checkpoint=None, **kwargs)


# ---------------------------------------------------------------- checkpoint files ------------

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
def test_unreadable_checkpoints(make, message, tmp_path, capsys):
    path = make(tmp_path)
    status, err = run_cli(["validate", "--bit", "3", "--checkpoint", str(path), "--limit", "1"], capsys)
    assert_clean_error(status, err, message)
    assert "weights_only" not in err and "will likely succeed" not in err and "unsafe" not in err


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_checkpoint_that_needs_code_is_refused_without_advice_to_unpickle(tmp_path, capsys):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "x": Payload()}, path)
    status, err = run_cli(["validate", "--bit", "3", "--checkpoint", str(path)], capsys)
    assert_clean_error(status, err, "only trusted checkpoints")
    assert "this ran while loading" not in capsys.readouterr().out
    assert "weights_only=False" not in err and "will likely succeed" not in err


def quantized_checkpoint(tmp_path, name="model.pth.tar", meta=None, **alpha_values):
    model = build_model("cifar10", "resnet20", 3)
    state = model.state_dict()
    for key, value in alpha_values.items():
        state[key.replace("__", ".")] = torch.tensor(value)
    path = tmp_path / name
    torch.save({"state_dict": state, "meta": {"dataset": "cifar10", "arch": "resnet20", "bit": 3, **(meta or {})}}, path)
    return path


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["layer2__0__conv1__act_alpha", "layer1__1__conv2__weight_alpha"])
def test_bad_alpha_is_refused_naming_the_layer(which, value, tmp_path, capsys):
    path = quantized_checkpoint(tmp_path, **{which: value})
    model = build_model("cifar10", "resnet20", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer, kind = which.replace("__", ".").rsplit(".", 1)
    with pytest.raises(checkpoints.CheckpointError, match=f"{kind} of layer {layer}"):
        checkpoints.load_into(model, path, "cifar10", "resnet20", 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # nothing copied
    status, err = run_cli(["validate", "--checkpoint", str(path), "--limit", "1"], capsys)
    assert_clean_error(status, err, f"{kind} of layer {layer}", "finite positive")


def test_metadata_scheme_and_level_rule_are_checked(tmp_path, capsys):
    path = quantized_checkpoint(tmp_path, meta={"scheme": "uniform"})
    status, err = run_cli(["validate", "--checkpoint", str(path), "--scheme", "apot", "--limit", "1"], capsys)
    assert_clean_error(status, err, "holds a uniform model, not apot")
    path = quantized_checkpoint(tmp_path, "rule.pth.tar", meta={"scheme": "apot", "level_rule": "something-else"})
    status, err = run_cli(["validate", "--checkpoint", str(path), "--limit", "1"], capsys)
    assert_clean_error(status, err, "level-set rule 'something-else'")


def test_directory_as_data(tmp_path, capsys):
    status, err = run_cli(["validate", "--bit", "3", "--checkpoint", str(quantized_checkpoint(tmp_path)),
                           "--data", str(tmp_path)], capsys)
    assert_clean_error(status, err, "is a directory")


# ---------------------------------------------------------------- data files ------------------

def npz(tmp_path, x, y, name="bad.npz"):
    path = tmp_path / name
    np.savez(path, x=x, y=y)
    return path


IMAGES = np.zeros((4, 32, 32, 3), np.uint8)


@pytest.mark.parametrize("make, message", [
    (lambda p: npz(p, IMAGES, np.array([0, 1, 10, 2])), "labels must be 0..9"),
    (lambda p: npz(p, IMAGES, np.array([0, -1, 2, 2])), "labels must be 0..9"),
    (lambda p: npz(p, IMAGES, np.array([0, 3.7, 2, 2])), "labels must be integers"),
    (lambda p: npz(p, IMAGES[:0], np.zeros(0, np.int64)), "holds no images"),
    (lambda p: npz(p, np.zeros((4, 16, 16, 3), np.uint8), np.zeros(4, np.int64)), "x must be uint8 [N,32,32,3]"),
    (lambda p: write_bytes(p / "text.npz", b"not an archive\n"), "only .npz files of plain arrays are read"),
    (lambda p: npz(p, IMAGES, np.array([{"a": 1}] * 4, dtype=object)), "only .npz files of plain arrays are read"),
])
def test_bad_npz_files(make, message, tmp_path, capsys):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        data.load_npz(path)
    status, err = run_cli(["validate", "--bit", "3", "--checkpoint", str(quantized_checkpoint(tmp_path)),
                           "--data", str(path)], capsys)
    assert_clean_error(status, err, str(path))
    assert "allow_pickle" not in err


def test_torchvision_offline_is_one_line(monkeypatch, tmp_path, capsys):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    status, err = run_cli(["validate", "--bit", "3", "--checkpoint", str(quantized_checkpoint(tmp_path)),
                           "--data", "torchvision"], capsys)
    assert_clean_error(status, err, "could not be downloaded", "APOT_DATA_DIR")


def test_failed_download_leaves_no_folder(monkeypatch, tmp_path):
    target = tmp_path / "data" / "checkpoints"
    monkeypatch.setattr(checkpoints, "CACHE_DIR", target)
    monkeypatch.delenv("APOT_DATA_DIR", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(checkpoints.urllib.request, "urlopen", offline)
    with pytest.raises(checkpoints.CheckpointError, match="could not download"):
        checkpoints.release_path("cifar10", "resnet20", 3)
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- training faults -------------

def tiny_train_argv(ref, out, *extra):
    first1000 = str(ref("cifar10/test_first1000_lossless.npz"))
    return ["train", "--bit", "3", "--data", first1000, "--val-data", first1000, "--subset", "256",
            "--val-subset", "100", "--max-steps", "2", "--epochs", "1", "--out", str(out), "--no-progress", *extra]


def test_diverging_run_stops_with_a_clear_message(ref, tmp_path, capsys):
    status, err = run_cli(tiny_train_argv(ref, tmp_path / "run", "--lr", "1e30"), capsys)
    assert_clean_error(status, err, "the training loss is", "diverged")


def test_stale_temporary_files_are_removed(ref, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".checkpoint.pth.tar.abc123.tmp", out / ".model_best.pth.tar.zz.tmp"]
    mine = out / "notes.tmp"
    for path in stale + [mine]:
        path.write_bytes(b"x" * 100)
    status, err = run_cli(tiny_train_argv(ref, out), capsys)
    assert status == 0, err
    assert not any(path.exists() for path in stale) and mine.exists()
    status, err = run_cli(tiny_train_argv(ref, out, "--resume"), capsys)
    assert_clean_error(status, err, "nothing to do")


# ---------------------------------------------------------------- the projection --------------

EDGE_VALUES = [float("inf"), -float("inf"), float("nan"), 1e38, -1e38, 3.4e38, 1e-45, -0.0, 0.0, 1.0, 2.0]

PROJECTION_SCRIPT = """
import sys, torch
from apot_utils.levels import level_set
from apot_utils.quantize import project
n = int(sys.argv[1])
x = torch.tensor([float(v) for v in sys.argv[2:]]).repeat(n // (len(sys.argv) - 2) + 1)[:n]
out = project(x, level_set(4))
print(" ".join(repr(v) for v in out[: len(sys.argv) - 2].tolist()))
"""


@pytest.mark.parametrize("numel", [11, 1 << 17])        # eager kernel; compiled kernel (>= 65,536 elements)
def test_projection_of_inf_nan_and_huge_values(numel):
    run = subprocess.run([sys.executable, "-c", PROJECTION_SCRIPT, str(numel), *map(repr, EDGE_VALUES)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    got = [float(v) for v in run.stdout.split()]
    expected = [1.0, 0.0, float("nan"), 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert [str(v) for v in got] == [str(v) for v in expected]


def test_nan_input_stays_nan_through_a_layer():
    from apot_utils.layers import QuantConv2d

    conv = QuantConv2d(2, 2, 1, bit=3).eval()
    x = torch.rand(1, 2, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    with torch.no_grad():
        out = conv(x)
    assert torch.isnan(out[0, :, 1, 1]).all() and torch.isfinite(out[0, :, 0, 0]).all()


def release_argmin(x, bits):
    """The release's projection, restated: its construction's list order, argmin's first index."""
    from apot_utils.levels import _apot_sums, default_terms

    listed = torch.tensor(list(set(_apot_sums(bits, default_terms(bits)))), dtype=torch.float32)
    listed = listed.mul(1.0 / listed.max())
    return listed[(x.unsqueeze(0) - listed.unsqueeze(1)).abs().min(dim=0)[1]]


@pytest.mark.parametrize("bits", range(2, 7))
def test_released_sets_break_ties_as_the_release(bits):
    levels = level_set(bits)
    midpoints = ((levels[1:].double() + levels[:-1].double()) / 2).float()
    exact = midpoints[(midpoints.double() * 2 == levels[1:].double() + levels[:-1].double())]
    assert exact.numel() > 0
    expected = release_argmin(exact, bits)
    assert torch.equal(project(exact, projection_order(bits)), expected)
    if bits == 2:   # [0, 1, 0.5, 0.25]: the midpoint 0.375 goes up to 0.5, where sorted order sends it down
        assert project(torch.tensor([0.375]), projection_order(2)).item() == 0.5
        assert project(torch.tensor([0.375]), level_set(2)).item() == 0.25
    x = torch.rand(50_000, generator=torch.Generator().manual_seed(bits))
    assert torch.equal(project(x, projection_order(bits)), argmin_project(x, projection_order(bits)))


def test_weight_magnitudes_follow_the_release_order():
    for bits in range(3, 7):
        assert torch.equal(weight_projection_order(bits), projection_order(bits - 1))


def test_level_sets_that_float32_cannot_hold_say_which_exist():
    assert available_terms(8) == [3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match=r"terms must be one of \[3, 4, 5, 6, 7, 8\]"):
        level_set(8, terms=1)
    with pytest.raises(ValueError, match="use at most 7 bits"):
        level_set(8, "pot")


def test_offline_chapters_get_a_resnet20_shaped_stand_in(monkeypatch, tmp_path):
    """Chapters 01-02 use the released weights by layer name; offline they get a seeded random ResNet-20's."""
    from apot_utils import analysis

    monkeypatch.setattr(checkpoints, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("APOT_DATA_DIR", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(checkpoints.urllib.request, "urlopen", offline)
    state = torch.random.get_rng_state()
    layers, source = analysis.resnet20_weights()
    assert torch.equal(torch.random.get_rng_state(), state)                 # the caller's random state is untouched
    assert source.startswith("randomly initialized ResNet-20, no released checkpoint") and "could not download" in source
    assert "layer3.0.conv2" in layers and torch.equal(layers["layer1.0.conv1"], analysis.resnet20_weights()[0]["layer1.0.conv1"])


def test_notebooks_skip_with_the_reason_without_reference_data(tmp_path):
    """A fresh clone without APOT_DATA_DIR: the chapters' cells skip, saying why (CI sets the data and runs them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("APOT_DATA_DIR", "APOT_REQUIRE_DATA")}
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          str(root / "notebooks" / "06_integer_inference.ipynb")],
                         capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "passed" not in run.stdout.splitlines()[-1] and "skipped" in run.stdout.splitlines()[-1]
    assert "notebook outputs are computed from the reference data: set APOT_DATA_DIR" in run.stdout


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--bit", "3", "--terms", "3", "--out", "x.pth.tar"], "3-bit weights project their magnitudes to a 2-bit set"),
    (["quantize", "--bit", "8", "--terms", "1", "--out", "x.pth.tar"], "terms must be one of"),
    (["quantize", "--bit", "9", "--out", "x.pth.tar"], "invalid choice"),
    (["quantize", "--bit", "32", "--out", "x.pth.tar"], "quantize needs --bit 2..8"),
    (["quantize", "--bit", "4", "--calib", "0", "--out", "x.pth.tar"], "must be at least 1"),
    (["quantize", "--bit", "4", "--init", "QUANTIZED", "--out", "x.pth.tar"], "post-training quantization starts from a full-precision"),
    (["export", "--bit", "32", "--out", "x.safetensors"], "export needs a quantized model"),
    (["export", "--bit", "3", "--out", "x.pt"], "must end in .safetensors"),
])
def test_quantize_and_export_refuse_bad_arguments_and_write_nothing(argv, message, ref, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [str(ref("checkpoints/cifar10/res20_3bit.pth.tar")) if a == "QUANTIZED" else a for a in argv]
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    assert status == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
