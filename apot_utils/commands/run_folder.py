"""A training run's folder: held by one training at a time (:class:`RunFolder`), the epoch's checkpoint and best
model written in an order that never leaves a checkpoint without its best model (:func:`save_epoch`), and what a
resumed run reads back (:func:`saved_run`, :func:`resumed_recipe`)."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from torch import nn

from ..fakequant.spec import ModelSpec
from ..fakequant.training import Recipe
from ..files import checkpoints


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`apot_utils.files.checkpoints.save_checkpoint` left in the run
    folder (``.checkpoint.pth.tar.*.tmp``, ``.model_best.pth.tar.*.tmp``); returns what it removed."""
    stale = [p for name in ("checkpoint.pth.tar", "model_best.pth.tar") for p in Path(out).glob(f".{name}.*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_epoch(out: Path, model: nn.Module, spec: ModelSpec, recipe: Recipe, optimizer, scheduler, epoch: int,
          best: float, improved: bool) -> None:
    """The best model when ``improved``, then the run's checkpoint after ``epoch`` (1-based count of epochs done):
    in that order, so that a run whose checkpoint records a best accuracy always has that best model beside it (a
    write that fails leaves the checkpoint of the epoch before, which a resume repeats)."""
    meta = spec.meta() | {"epoch": epoch, "best_acc1": best, "recipe": dataclasses.asdict(recipe)}
    state = model.state_dict()
    if improved:
        checkpoints.save_checkpoint({"state_dict": state, "meta": meta}, out / "model_best.pth.tar")
    checkpoints.save_checkpoint({"state_dict": state, "meta": meta, "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict()}, out / "checkpoint.pth.tar")


class RunFolder:
    """The run folder ``out``, held by one training at a time: ``fcntl.flock`` on ``out/.lock`` (released when
    the process ends, however it ends; the file is removed as the training ends, and a file left by a killed one is
    taken over). A second training into the same folder gets a FileExistsError. :meth:`discard_failed_start`
    removes what a run that wrote no checkpoint created (the TensorBoard folder, the folder itself when it is
    left empty)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.created = not self.out.exists()
        self.tensorboard_existed = (self.out / "tensorboard").exists()
        self._lock, self._discarded = None, False

    def __enter__(self) -> "RunFolder":
        import fcntl

        self.out.mkdir(parents=True, exist_ok=True)
        lock_path = self.out / ".lock"
        while True:
            self._lock = open(lock_path, "a+")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.seek(0)
                holder = self._lock.read().strip() or "unknown"
                self._lock.close()
                raise FileExistsError(f"another training (process {holder}) is running in {self.out}: wait for it "
                                      "to end, or choose another --out") from None
            try:            # the holder before us removes the file as it ends: then we hold a file no one else sees
                if os.stat(lock_path).st_ino == os.fstat(self._lock.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            self._lock.close()
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        return self

    def __exit__(self, *exc) -> None:
        (self.out / ".lock").unlink(missing_ok=True)       # still held: no one can take it in between
        self._lock.close()
        if self._discarded and self.created and not any(self.out.iterdir()):
            self.out.rmdir()

    def discard_failed_start(self) -> None:
        if not self.tensorboard_existed:
            shutil.rmtree(self.out / "tensorboard", ignore_errors=True)
        self._discarded = True          # the folder itself goes at __exit__, with the lock file, if left empty


def saved_run(last_path: Path) -> dict:
    """The last checkpoint of a run to resume, checked to be one that :func:`train` wrote."""
    saved = checkpoints.read_checkpoint(last_path)
    meta = saved.get("meta", {})
    lacking = [k for k in ("optimizer", "scheduler") if k not in saved] + \
              [f"meta {k}" for k in ("epoch", "best_acc1", "recipe") if k not in meta]
    if lacking:
        raise checkpoints.CheckpointError(
            f"{last_path} is not the checkpoint of a training run (it lacks {', '.join(lacking)}): to go on from its "
            f"weights, start a new run with --init {last_path} and another --out")
    return saved


def resumed_recipe(saved: dict, asked: Recipe | None, out: Path) -> Recipe:
    """The recipe the run in ``out`` was started with; ``asked`` (when given) must be the same."""
    recorded = dict(saved["meta"]["recipe"])
    fields = {f.name for f in dataclasses.fields(Recipe)}
    required = {f.name for f in dataclasses.fields(Recipe) if f.default is dataclasses.MISSING}
    unknown, missing = sorted(set(recorded) - fields), sorted(required - set(recorded))
    if unknown or missing or not isinstance(recorded.get("milestones"), (list, tuple)):
        raise checkpoints.CheckpointError(
            f"{out / 'checkpoint.pth.tar'}: its recorded recipe is not one this version reads (unknown {unknown}, "
            f"missing {missing or ''}{'' if isinstance(recorded.get('milestones'), (list, tuple)) else ', milestones not a list'}): "
            f"start a new run with --init {out / 'checkpoint.pth.tar'} and another --out")
    run = Recipe(**{**recorded, "milestones": tuple(recorded["milestones"])})
    if asked is not None and asked != run:
        changed = [f"{f.name} {getattr(asked, f.name)} (the run: {getattr(run, f.name)})"
                   for f in dataclasses.fields(Recipe) if getattr(asked, f.name) != getattr(run, f.name)]
        raise ValueError(f"--resume continues the run in {out} with the recipe it was started with; asked for "
                         f"{'; '.join(changed)}. To train on with another schedule, start a new run with "
                         f"--init {out / 'checkpoint.pth.tar'} and another --out")
    return run
