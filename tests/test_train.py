"""Quantization-aware training: a CPU smoke run, resume after an interruption, two processes under torchrun."""
import glob
import os
import re
import subprocess
import sys

import pytest
import torch

from apot_utils.files import batching, checkpoints, data, imagenet
from apot_utils.commands import train
from apot_utils.fakequant import training
from apot_utils.fakequant.spec import ModelSpec
from apot_utils.fakequant.layers import quantized_layers
import dataclasses
from apot_utils.fakequant.loading import load_model
from apot_utils.files.tblogs import read_scalars


@pytest.fixture(scope="module")
def sources(ref):
    return ref("cifar10/jpeg_files.zip"), ref("cifar10/test_first100_lossless.npz")


def _config(sources, out, **kw):
    recipe = training.shortened(training.default_recipe("cifar10", 4), kw.pop("epochs", 3))
    recipe = dataclasses.replace(recipe, batch_size=64, lr=0.1, milestones=())
    return train.TrainConfig(bit=4, out=out, recipe=recipe, data_source=sources[0], val_source=sources[1],
                             subset=256, device="cpu", log_every=1, progress=False, **kw)


def test_recipe_defaults_follow_the_release():
    r = training.default_recipe("cifar10", 2)
    assert (r.epochs, r.batch_size, r.lr, r.weight_decay, r.milestones) == (300, 128, 0.04, 3e-5, (150, 225))
    assert training.default_recipe("cifar10", 32).weight_decay == 5e-4 and training.default_recipe("cifar10", 32).lr == 0.1
    assert training.shortened(r, 4).milestones == (2, 3)
    i = training.default_recipe("imagenet", 4)
    assert (i.batch_size, i.lr, i.weight_decay, i.milestones, i.epochs) == (1024, 0.01, 1e-4, (30, 60, 90), 100)
    model = ModelSpec("cifar10", "resnet20", 4).build()
    groups = {g["name"]: g for g in training.parameter_groups(model, r)}
    assert len(groups["act_alpha"]["params"]) == len(groups["weight_alpha"]["params"]) == 20
    assert (groups["act_alpha"]["lr"], groups["act_alpha"]["weight_decay"]) == (0.1, 1e-4)
    assert (groups["weight_alpha"]["lr"], groups["weight_alpha"]["weight_decay"]) == (0.02, 1e-4)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == sum(p.numel() for p in model.parameters())


def _subset_loss(model, images, labels):
    """Cross-entropy on fixed, un-augmented images, BatchNorm on batch statistics (train mode)."""
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model.train()(images), labels).item()


@pytest.mark.slow
def test_smoke_run_learns_and_its_checkpoint_validates(sources, tmp_path):
    subset = data.load_jpeg_zip(sources[0], "train", sample=256, seed=0)
    images, labels = next(batching.batches(subset, 256))
    torch.manual_seed(0)                                             # the trainer's seed: the same initial model
    before = _subset_loss(ModelSpec("cifar10", "resnet20", 4).build(), images, labels)
    result = train.train(_config(sources, tmp_path / "run", epochs=3), log=lambda line: None)
    trained = load_model("cifar10", "resnet20", None, tmp_path / "run" / "checkpoint.pth.tar", log=lambda line: None)
    after = _subset_loss(trained, images, labels)
    assert after < before - 0.05, (before, after)
    scalars = read_scalars(glob.glob(str(tmp_path / "run" / "tensorboard" / "events*"))[0])
    assert len(scalars["loss_train"][1]) == 12                       # 256 images / 64 = 4 steps, 3 epochs
    act = [scalars[t][1] for t in scalars if t.startswith("alpha/act/")]
    weight = [scalars[t][1] for t in scalars if t.startswith("alpha/weight/")]
    assert len(act) == len(weight) == 20
    assert all(a[-1] != 8.0 for a in act) and all(w[-1] != 3.0 for w in weight)      # every α learned something
    meta = checkpoints.checkpoint_meta(tmp_path / "run" / "checkpoint.pth.tar")
    assert (meta["bit"], meta["arch"], meta["scheme"], meta["epoch"], meta["level_rule"]) == (4, "resnet20", "apot", 3, "apot-position-v1")
    # validate reads the bitwidth from the checkpoint and gets the trainer's last number
    out = subprocess.run([sys.executable, "-m", "apot_utils", "validate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pth.tar"),
                          "--data", str(sources[1]), "--device", "cpu"], capture_output=True, text=True, check=True).stdout
    assert "=> loading the 4-bit quantized model from checkpoint" in out
    assert out.splitlines()[-1] == f" * Prec {result.last.top1:.3f}% "


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(sources, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_validate = train.validate

    def validate_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:                  # 1: before the first step, 2: epoch 0, 3: epoch 1
            raise KeyboardInterrupt("killed during epoch 1's validation")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(train, "validate", validate_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.train(_config(sources, tmp_path / "run", epochs=2), log=lambda line: None)
    assert checkpoints.checkpoint_meta(tmp_path / "run" / "checkpoint.pth.tar")["epoch"] == 1
    with pytest.raises(FileExistsError, match="--resume"):
        train.train(_config(sources, tmp_path / "run", epochs=2), log=lambda line: None)
    monkeypatch.setattr(train, "validate", real_validate)
    lines = []
    train.train(_config(sources, tmp_path / "run", epochs=2, resume=True), log=lines.append)
    assert any(line.startswith("=> resuming") and "at epoch 1" in line for line in lines)
    assert [line for line in lines if line.startswith("=> epoch")][0].startswith("=> epoch 1:")
    saved = checkpoints.read_checkpoint(tmp_path / "run" / "checkpoint.pth.tar")
    assert saved["meta"]["epoch"] == 2 and saved["scheduler"]["last_epoch"] == 2


@pytest.mark.slow
def test_torchrun_two_processes_keep_identical_parameters(sources, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "apot_utils", "train", "--bit", "3", "--device", "cpu", "--data", str(sources[0]),
               "--val-data", str(sources[1]), "--subset", "256", "--batch-size", "64", "--epochs", "1",
               "--max-steps", "3", "--no-progress", "--out", str(tmp_path / "ddp")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    # the two processes share one pipe, so one's line can land in the middle of the other's: search, not split
    found = dict(re.findall(r"=> rank (\d) parameter digest ([0-9a-f]{16})", run.stdout))
    assert sorted(found) == ["0", "1"], run.stdout
    assert found["0"] == found["1"]
    assert "batch 64 (32 per process)" in run.stdout and "3 steps an epoch" in run.stdout
    assert "each process validates its shard of the 100 validation images; the results are summed" in run.stdout
    assert checkpoints.checkpoint_meta(tmp_path / "ddp" / "checkpoint.pth.tar")["bit"] == 3


def test_imagenet_recipe_runs_on_an_imagefolder(tmp_path):
    folder = imagenet.make_synthetic_imagefolder(tmp_path / "images")        # 1,000 classes, one image each
    recipe = dataclasses.replace(training.shortened(training.default_recipe("imagenet", 2), 1), batch_size=4)
    cfg = train.TrainConfig(dataset="imagenet", arch="resnet18", bit=2, out=tmp_path / "run", recipe=recipe,
                            data_source=folder, val_source=folder, subset=8, val_subset=4, device="cpu", workers=0,
                            progress=False)
    lines = []
    train.train(cfg, log=lines.append)
    assert any("2 steps an epoch, batch 4" in line for line in lines)      # --subset 8: 8 images, 2 batches
    model = load_model("imagenet", "resnet18", None, tmp_path / "run" / "checkpoint.pth.tar", log=lambda line: None)
    assert model.layer1[0].conv1.bit == 2


def test_imagenet_recipe_stops_weight_gradients_beyond_alpha_except_at_2_bits():
    from apot_utils.core.levels import weight_magnitudes
    from apot_utils.fakequant.quantizers import quantize_weight

    w = torch.tensor([-2.0, -0.4, 0.1, 0.7, 1.5])
    grads = {}
    for clip in (False, True):
        x = w.clone().requires_grad_(True)
        quantize_weight(x, torch.tensor(1.0), weight_magnitudes(4), clip_grad=clip).sum().backward()
        grads[clip] = x.grad
    assert torch.equal(grads[False], torch.ones(5))
    assert torch.equal(grads[True], (w.abs() <= 1).float())
    for bit, clipped in ((4, True), (2, False)):
        cfg = train.TrainConfig(dataset="imagenet", arch="resnet18", bit=bit)
        model = train._prepare_model(cfg, ModelSpec("imagenet", "resnet18", bit), training.default_recipe("imagenet", bit),
                                     "cpu", lambda line: None)
        assert {layer.clip_weight_grad for _, layer in quantized_layers(model)} == {clipped}
    cifar = train._prepare_model(train.TrainConfig(bit=4), ModelSpec("cifar10", "resnet20", 4),
                                 training.default_recipe("cifar10", 4), "cpu", lambda line: None)
    assert not any(layer.clip_weight_grad for _, layer in quantized_layers(cifar))


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
@pytest.mark.parametrize("bit", [2, 3, 4, 5])
def test_imagenet_recipe_is_what_the_authors_logs_show(ref, arch, bit):
    """Base lr, warm-up, decay steps and length of the recipe against the ``lr`` scalar of the run's log."""
    from apot_utils.files.tblogs import read_scalars

    steps, lr = read_scalars(ref(f"logs/imagenet/res{arch[6:]}_{bit}bit.tfevents"))["lr"]
    recipe = training.default_recipe("imagenet", bit, arch)
    from apot_utils.files.tblogs import STEPS_PER_EPOCH as per_epoch
    logged = dict(zip(steps, lr))
    assert logged[10_000] == pytest.approx(recipe.lr, rel=1e-6)                   # after the warm-up
    for step in (100, 1000, 2400):                                               # the warm-up itself
        assert logged[step] == pytest.approx(training.warmup_lr(recipe, step), rel=2e-3)
    assert training.warmup_lr(recipe, recipe.warmup_steps) is None
    drops = [s for s, before, after in zip(steps[1:], lr, lr[1:]) if after < 0.5 * before]
    assert len(drops) == len(recipe.milestones)
    assert drops == [epoch * per_epoch for epoch in recipe.milestones], drops
    for step, epoch in zip(drops, recipe.milestones):
        assert logged[step] == pytest.approx(recipe.lr * recipe.gamma ** (recipe.milestones.index(epoch) + 1), rel=1e-5)
    assert abs(steps[-1] / per_epoch - recipe.epochs) < 1
    assert recipe.weight_decay == (2e-5 if bit == 2 else 1e-4)   # the release README; not in the logs


def test_cifar_recipe_treats_normalization_statistics_as_constants():
    """CIFAR-10: no gradient through the weights' mean and std (the release's ``weight.data.mean()``);
    ImageNet: through them. The forward is the same."""
    from apot_utils.core.reference import normalize_weight

    w = torch.randn(8, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(w)
    detached = torch.autograd.grad((normalize_weight(w, stats_grad=False) * g).sum(), w)[0]
    assert torch.allclose(detached, g / w.detach().std())
    through = torch.autograd.grad((normalize_weight(w, stats_grad=True) * g).sum(), w)[0]
    assert not torch.allclose(through, detached)
    cifar = train._prepare_model(train.TrainConfig(bit=4), ModelSpec("cifar10", "resnet20", 4),
                                 training.default_recipe("cifar10", 4), "cpu", lambda line: None)
    imagenet = train._prepare_model(train.TrainConfig(dataset="imagenet", arch="resnet18", bit=4),
                                    ModelSpec("imagenet", "resnet18", 4), training.default_recipe("imagenet", 4), "cpu",
                                    lambda line: None)
    assert {layer.weight_stats_grad for _, layer in quantized_layers(cifar)} == {False}
    assert {layer.weight_stats_grad for _, layer in quantized_layers(imagenet)} == {True}


@pytest.mark.slow
def test_train_and_validate_a_mobilenet_from_the_command_line(sources, tmp_path):
    """`train --arch mobilenet_v2` fine-tunes the shipped full-precision MobileNetV2 at 3 bits (uniform; signed
    layers from the graph), records the architecture, and `validate` rebuilds the model from the checkpoint alone."""
    from apot_utils.files.paths import SHIPPED_DIR
    fp = SHIPPED_DIR / "mobilenet_v2" / "fp.pth.tar"
    run = tmp_path / "run"
    command = [sys.executable, "-m", "apot_utils", "train", "--arch", "mobilenet_v2", "--bit", "3", "--scheme", "uniform",
               "--init", str(fp), "--no-calibrate", "--epochs", "1", "--subset", "64", "--batch-size", "32",
               "--data", str(sources[0]), "--val-data", str(sources[1]), "--out", str(run), "--device", "cpu",
               "--no-progress"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "=> 3-bit mobilenet_v2, epochs 0..0, 2 steps an epoch" in out.stdout
    meta = checkpoints.checkpoint_meta(run / "checkpoint.pth.tar")
    assert (meta["arch"], meta["bit"], meta["scheme"]) == ("mobilenet_v2", 3, "uniform")
    model = load_model("cifar10", "mobilenet_v2", None, run / "checkpoint.pth.tar", log=lambda line: None)
    assert sum(m.signed for _, m in quantized_layers(model)) == 17
    last = re.findall(r"val top-1 ([\d.]+) %", out.stdout)[-1]
    shown = subprocess.run([sys.executable, "-m", "apot_utils", "validate", "--checkpoint", str(run / "checkpoint.pth.tar"), "--data", str(sources[1]), "--device", "cpu"],
                           capture_output=True, text=True, check=True).stdout
    assert shown.splitlines()[-1] == f" * Prec {float(last):.3f}% "
