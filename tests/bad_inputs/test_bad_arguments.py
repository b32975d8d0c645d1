"""Options out of range: counts below one, bitwidths and term counts that do not exist, devices this
project does not run on, percentiles that leave α at zero. One clear line, exit status 2, nothing written."""
import pytest

from apot_utils.commands.validate import run_validation


@pytest.mark.parametrize("argv", [
    ["validate", "--limit", "0"], ["validate", "--limit", "-5"], ["validate", "--batch-size", "0"],
    ["validate", "--batch-size", "-1"], ["train", "--max-steps", "0"], ["train", "--subset", "0"],
    ["train", "--batch-size", "0"], ["train", "--epochs", "0"], ["quantize", "--bit", "5", "--calib", "0", "--out", "x"],
    ["train", "--terms", "0"],
])
def test_counts_below_one_are_refused(argv, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli(*argv).assert_clean_error("must be at least 1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs", [dict(limit=0), dict(limit=-5), dict(batch_size=0), dict(batch_size=-1)])
def test_counts_below_one_are_refused_by_the_api(kwargs):
    with pytest.raises(ValueError, match="at least 1"):
        run_validation(checkpoint=None, **kwargs)


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
def test_quantize_and_export_refuse_bad_arguments_and_write_nothing(argv, message, ref, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(ref("checkpoints/cifar10/res20_3bit.pth.tar")) if a == "QUANTIZED" else a for a in argv]
    run = cli(*argv)
    assert run.status == 2 and message in run.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device, message", [("xpu", "cpu, cuda or cuda:N, got 'xpu'"), ("gpu", "got 'gpu'"),
                                              ("mps", "CPUs and CUDA GPUs only")])
def test_devices_this_project_does_not_run_on(device, message, cli, ref):
    cli("validate", "--bit", "3", "--device", device, "--limit", "1").assert_clean_error(message)


def test_a_percentile_that_is_zero_says_so(cli, ref, tmp_path):
    """Half or more of a layer's inputs are 0 after its ReLU: the 50th percentile is 0, no α."""
    percentile = "50"
    out = tmp_path / "ptq.pth.tar"
    run = cli("quantize", "--bit", "3", "--calib", "16", "--act-rule", "percentile", "--percentile", percentile,
              "--data", ref("cifar10/test_first100_lossless.npz"), "--out", out)
    run.assert_clean_error(f"the {percentile}th percentile of its input activations is 0", "% of them are 0")
    assert "divisor" not in run.err and not out.exists()


def test_flags_that_a_command_would_ignore_are_refused(tmp_path, cli, ref):
    """--variant belongs to ONNX; --scheme is recorded in an exported file; milestones are increasing epochs."""
    run = cli("export", "--bit", "3", "--variant", "fast", "--out", tmp_path / "m.safetensors")
    run.assert_clean_error("--format onnx")
    assert not (tmp_path / "m.safetensors").exists()
    run = cli("validate", "--checkpoint", tmp_path / "m.safetensors", "--scheme", "uniform")
    run.assert_clean_error("--scheme is recorded")
    cli("train", "--bit", "3", "--milestones", "1", "1", "--out", tmp_path / "run").assert_clean_error("increasing")
    assert not (tmp_path / "run").exists()


def test_names_that_would_mislead(tmp_path, cli):
    run = cli("quantize", "--bit", "4", "--out", tmp_path / "q.safetensors")
    run.assert_clean_error("quantize writes a PyTorch checkpoint")
    cli("export", "--bit", "3", "--out", tmp_path / ".safetensors").assert_clean_error("has no name before .safetensors")
    (tmp_path / "afile").write_text("x")
    cli("train", "--bit", "3", "--out", tmp_path / "afile").assert_clean_error("is a file")


def test_ctrl_c_says_interrupted_and_exits_130(monkeypatch, tmp_path, cli):
    from apot_utils.commands import export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(export, "export_checkpoint", interrupted)
    run = cli("export", "--bit", "3", "--out", tmp_path / "m.safetensors")
    assert run.status == 130 and "interrupted" in run.err and "Traceback" not in run.err


def test_onnx_without_the_deploy_extra_names_the_install_command(monkeypatch, tmp_path, cli, ref):
    ref("checkpoints/cifar10/res20_3bit.pth.tar")                # the released model it exports
    import sys

    for name in ("onnx", "onnx.helper", "onnx.numpy_helper", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)          # import onnx: ModuleNotFoundError, as if not installed
    run = cli("export", "--bit", "3", "--format", "onnx", "--out", tmp_path / "m.onnx")
    run.assert_clean_error("deploy extra", "pip install")
    assert not (tmp_path / "m.onnx").exists()


def test_validate_reads_the_model_from_any_files_metadata(tmp_path, cli, ref):
    """A ResNet-32 checkpoint named .ckpt, and exported under any name: validate takes --arch from the file's
    metadata (before, only .pth/.tar/.pt names were read and the default ResNet-20 did not fit)."""
    import torch

    from apot_utils.fakequant.spec import ModelSpec

    model = ModelSpec("cifar10", "resnet32", 3).build()
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "meta": model.spec.meta()}, ckpt)
    images = ref("cifar10/test_first1000_lossless.npz")
    run = cli("validate", "--checkpoint", ckpt, "--data", images, "--limit", "100")
    assert run.status == 0, run.err
    exported = tmp_path / "r32.safetensors"
    assert cli("export", "--checkpoint", ckpt, "--out", exported).status == 0
    run = cli("validate", "--checkpoint", exported, "--data", images, "--limit", "100")
    assert run.status == 0, run.err


@pytest.mark.parametrize("argv, flag", [
    (["export", "--bit", "3", "--scheme", "uniform", "--out", "x.safetensors"], "--scheme"),
    (["export", "--bit", "3", "--data", "torchvision", "--out", "x.safetensors"], "--data"),
    (["export", "--bit", "3", "--device", "cuda", "--out", "x.safetensors"], "--device"),
    (["export", "--bit", "3", "--batch-size", "64", "--out", "x.safetensors"], "--batch-size"),
    (["quantize", "--bit", "3", "--device", "cuda", "--out", "x.pth.tar"], "--device"),
])
def test_a_flag_the_command_would_ignore_is_refused(argv, flag, cli, tmp_path, monkeypatch):
    """export takes its model, scheme included, from the checkpoint and reads no images; quantize calibrates on the
    CPU: such flags used to be accepted and ignored."""
    monkeypatch.chdir(tmp_path)
    run = cli(*argv)
    assert run.status == 2 and "unrecognized arguments" in run.err and flag in run.err
    assert list(tmp_path.iterdir()) == []


def test_data_loading_processes_without_cpu_affinity(monkeypatch):
    """macOS has no os.sched_getaffinity: the CPU count is used instead of an AttributeError."""
    import os

    from apot_utils.cli import _workers

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert _workers(None) == min(8, os.cpu_count() or 1) and _workers(3) == 3


def test_a_flag_is_never_taken_for_a_longer_one(cli, tmp_path, monkeypatch):
    """argparse's abbreviations read export's --data as --dataset (a command without --data): none are taken."""
    monkeypatch.chdir(tmp_path)
    run = cli("validate", "--lim", "10")
    assert run.status == 2 and "unrecognized arguments: --lim" in run.err
