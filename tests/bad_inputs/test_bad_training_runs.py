"""Training runs that must not be mixed up or lost: resuming with other options, two trainings into one
folder, resuming from a file that is no run's checkpoint, a full disk, a run that diverges or never starts,
and post-training checkpoints fine-tuned as they were made."""
import errno
import fcntl
import shutil
from pathlib import Path

import pytest
import torch

from apot_utils.files import atomic, checkpoints
from apot_utils.commands import train
from apot_utils.core.levels import level_set


def meta_of(path):
    return checkpoints.read_checkpoint(path)["meta"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, first1000):
    """A finished one-epoch tiny run (copy it before changing it)."""
    from apot_utils.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--bit", "3", "--data", str(first1000), "--val-data", str(first1000), "--subset", "256",
                 "--val-subset", "100", "--max-steps", "2", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def interrupted(finished, tmp_path):
    """The finished run as it was after its first epoch: its last checkpoint says epoch 1 of 2."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    saved = checkpoints.read_checkpoint(out / "checkpoint.pth.tar")
    saved["meta"]["epoch"] = 1
    checkpoints.save_checkpoint(saved, out / "checkpoint.pth.tar")
    return out


def tiny_args(first1000, out, *extra):
    return ["train", "--bit", "3", "--data", first1000, "--val-data", first1000, "--subset", "256", "--val-subset", "100",
            "--max-steps", "2", "--out", out, "--no-progress", *extra]


@pytest.mark.parametrize("extra, changed", [(["--epochs", "2", "--lr", "0.001"], "lr 0.001 (the run: 0.04)"),
                                            (["--epochs", "5"], "epochs 5 (the run: 2)"),
                                            (["--epochs", "2", "--milestones", "1"], "milestones (1,) (the run: (1, 2))")])
def test_resume_refuses_another_recipe_and_changes_nothing(extra, changed, interrupted, first1000, cli):
    before = (interrupted / "checkpoint.pth.tar").read_bytes()
    run = cli(*tiny_args(first1000, interrupted, "--resume", *extra))
    run.assert_clean_error("continues the run", changed, "--init")
    assert (interrupted / "checkpoint.pth.tar").read_bytes() == before


def test_resume_without_options_takes_the_runs_own_recipe(interrupted, first1000, cli):
    run = cli(*tiny_args(first1000, interrupted, "--resume"))
    assert run.status == 0, run.err
    assert "epochs 1..1" in run.out and "lr 0.04" in run.out
    assert meta_of(interrupted / "checkpoint.pth.tar")["epoch"] == 2


def test_a_second_training_into_a_busy_folder_is_refused(tmp_path, first1000, cli):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:                      # what a running training holds
        held.write("12345\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        cli(*tiny_args(first1000, out, "--epochs", "1")).assert_clean_error(f"another training (process 12345) is running in {out}")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_the_lock_file_goes_with_the_training_and_a_killed_ones_is_taken_over(finished, interrupted, first1000, cli):
    """A finished run leaves no .lock; one left by a SIGKILLed training (a file no process holds) does not stop
    the next, which removes it as it ends."""
    assert not (finished / ".lock").exists()
    (interrupted / ".lock").write_text("4194303\n")              # what a killed training leaves
    run = cli(*tiny_args(first1000, interrupted, "--resume"))
    assert run.status == 0, run.err
    assert not (interrupted / ".lock").exists()


def test_resume_from_a_file_that_is_no_runs_checkpoint(finished, tmp_path, first1000, cli):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(finished / "model_best.pth.tar", out / "checkpoint.pth.tar")   # weights and meta, no optimizer
    cli(*tiny_args(first1000, out, "--resume")).assert_clean_error("is not the checkpoint of a training run",
                                                                     "optimizer", "--init")


class FullAfter:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, block):
        self.room -= len(block)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(block)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_full_disk_says_so_and_keeps_the_last_checkpoint(tmp_path, first1000, cli, monkeypatch):
    real, calls = checkpoints.save_checkpoint, []

    def on_a_full_disk(content, path):            # epoch 0 writes its checkpoint; epoch 1's finds the disk full
        calls.extend([path] if Path(path).name == "checkpoint.pth.tar" else [])
        if len(calls) <= 1:
            return real(content, path)
        return atomic.write_atomically(path, lambda f: torch.save(content, FullAfter(f, 4096)))

    monkeypatch.setattr(checkpoints, "save_checkpoint", on_a_full_disk)
    out = tmp_path / "run"
    run = cli(*tiny_args(first1000, out, "--epochs", "2"))
    run.assert_clean_error("no space left on the device", "the previous checkpoint.pth.tar is kept")
    assert "enforce fail" not in run.err and "unexpected pos" not in run.err
    assert meta_of(out / "checkpoint.pth.tar")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_a_full_disk_while_writing_the_best_model_keeps_the_run_consistent(tmp_path, first1000, cli, monkeypatch):
    """The best model is written before the run's checkpoint: a disk that fills while writing it leaves no
    checkpoint that records a best model the folder lacks."""
    real = checkpoints.save_checkpoint

    def full_for_the_best(content, path):
        if Path(path).name == "model_best.pth.tar":
            return atomic.write_atomically(path, lambda f: torch.save(content, FullAfter(f, 4096)))
        return real(content, path)

    monkeypatch.setattr(checkpoints, "save_checkpoint", full_for_the_best)
    out = tmp_path / "run"
    cli(*tiny_args(first1000, out, "--epochs", "2")).assert_clean_error("no space left on the device",
                                                                        "model_best.pth.tar was not written")
    assert not (out / "checkpoint.pth.tar").exists() and not (out / "model_best.pth.tar").exists()


def test_a_run_that_diverges_at_once_leaves_nothing(tmp_path, first1000, cli):
    out = tmp_path / "run"
    cli(*tiny_args(first1000, out, "--epochs", "1", "--lr", "1e30")).assert_clean_error("the training loss is", "diverged")
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"), ("--weight-decay", "-1e-4"),
                                         ("--momentum", "inf")])
def test_rates_that_are_not_finite_or_negative_are_refused(flag, value, tmp_path, first1000, cli):
    out = tmp_path / "run"
    cli(*tiny_args(first1000, out, "--epochs", "1", f"{flag}={value}")).assert_clean_error(
        f"{flag[2:].replace('-', '_')} must be a finite number")
    assert not out.exists()


def test_a_model_that_turns_nan_is_not_saved(tmp_path, first1000, cli, monkeypatch):
    real = train.train_one_epoch

    def poisoned(model, *args, **kwargs):
        stats = real(model, *args, **kwargs)
        model.layer1[0].conv1.weight.data.fill_(float("nan"))
        return stats

    monkeypatch.setattr(train, "train_one_epoch", poisoned)
    out = tmp_path / "run"
    cli(*tiny_args(first1000, out, "--epochs", "1")).assert_clean_error(
        "NaN or infinite values (layer1.0.conv1.weight", "no checkpoint was written")
    assert not out.exists()


@pytest.mark.parametrize("option, check", [
    (["--per-channel"], lambda meta, model: meta["per_channel"] and model.layer1[0].conv1.weight_alpha.shape == (16, 1, 1, 1)),
    (["--terms", "1"], lambda meta, model: meta["terms"] == 1
     and torch.equal(model.layer1[0].conv1.act_levels.sort().values, level_set(3, "apot", 1))),
])
def test_post_training_checkpoints_fine_tune_as_made(option, check, tmp_path, first1000, cli):
    from apot_utils.fakequant.loading import load_model

    ptq = tmp_path / "ptq.pth.tar"
    run = cli("quantize", "--bit", "3", "--calib", "32", "--data", first1000, "--out", ptq, *option)
    assert run.status == 0, run.err
    out = tmp_path / "run"
    run = cli(*tiny_args(first1000, out, "--epochs", "1", "--init", ptq))
    assert run.status == 0, run.err
    meta = meta_of(out / "checkpoint.pth.tar")
    assert check(meta, load_model("cifar10", "resnet20", None, out / "checkpoint.pth.tar", log=lambda line: None))
    contrary = ["--no-per-channel"] if option == ["--per-channel"] else ["--terms", "2"]
    cli(*tiny_args(first1000, tmp_path / "run2", "--epochs", "1", "--init", ptq, *contrary)).assert_clean_error(
        "was made with", "drop that option")


def test_stale_temporary_files_are_removed(tmp_path, first1000, cli):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".checkpoint.pth.tar.abc123.tmp", out / ".model_best.pth.tar.zz.tmp"]
    mine = out / "notes.tmp"
    for path in stale + [mine]:
        path.write_bytes(b"x" * 100)
    run = cli(*tiny_args(first1000, out, "--epochs", "1"))
    assert run.status == 0, run.err
    assert not any(path.exists() for path in stale) and mine.exists()
    cli(*tiny_args(first1000, out, "--epochs", "1", "--resume")).assert_clean_error("nothing to do")


def test_a_threshold_pushed_below_zero_stops_the_run_at_that_step(tmp_path, first1000, cli, monkeypatch):
    """SGD with an α learning rate too high for a fine-tune drives an activation α negative (it happened:
    --lr 0.002 with the recipe's α lr 0.1); the run stops at that step, naming the layer and the option."""
    real_step = torch.optim.SGD.step

    def step_then_overshoot(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        for group in self.param_groups:
            if group.get("name") == "act_alpha":
                group["params"][3].data.fill_(-0.32)
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_overshoot)
    out = tmp_path / "run"
    cli(*tiny_args(first1000, out, "--epochs", "1")).assert_clean_error(
        "act_alpha of layer layer1.1.conv2 became [-0.3", "at epoch 0, step 1", "lower act_alpha_lr (--act-alpha-lr)")
    assert not out.exists()


@pytest.mark.parametrize("extra, asked", [(["--bit", "4"], "--bit 4 (the run: 3)"),
                                          (["--arch", "resnet32"], "--arch resnet32 (the run: resnet20)"),
                                          (["--scheme", "uniform"], "--scheme uniform (the run: apot)")])
def test_resume_refuses_another_model_and_changes_nothing(extra, asked, interrupted, first1000, cli):
    """--resume trains the run's own model: another --bit, --arch or --scheme is refused, not logged and ignored."""
    before = (interrupted / "checkpoint.pth.tar").read_bytes()
    args = [a for a in tiny_args(first1000, interrupted, "--resume") if a not in ("--bit", "3")]
    run = cli(*args, *extra)
    run.assert_clean_error("continues the run", "3-bit apot resnet20", asked)
    assert (interrupted / "checkpoint.pth.tar").read_bytes() == before


def test_resume_without_bit_logs_the_runs_model(interrupted, first1000, cli):
    run = cli(*[a for a in tiny_args(first1000, interrupted, "--resume") if a not in ("--bit", "3")])
    assert run.status == 0, run.err
    assert "=> 3-bit resnet20" in run.out
