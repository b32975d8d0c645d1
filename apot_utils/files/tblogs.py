"""The authors' TensorBoard logs of their ImageNet runs, read with TensorBoard's own reader."""
from __future__ import annotations

from pathlib import Path

from .paths import reference_dir

LOG_URL = "https://github.com/yhhhli/APoT_Quantization/tree/master/ImageNet/events"
# a log step is one iteration (batch 1k, the README's "batch1k"); the learning rate drops at steps 37,500, 75,000
# and 112,500, the recipe's epochs 30, 60 and 90: 1,250 steps an epoch (1,281,167 images / 1,024 would be 1,251.1)
STEPS_PER_EPOCH = 1250


def read_scalars(path: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """tag -> (steps, values) of every scalar in one event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in acc.Tags()["scalars"]}


def _release_files(root: str | Path | None) -> dict[tuple[str, int], Path]:
    """(arch, bit) -> the released event file in ``root`` (default ``$APOT_DATA_DIR/logs/imagenet``)."""
    root = Path(root) if root else (reference_dir() / "logs" / "imagenet" if reference_dir() else None)
    if root is None or not root.is_dir():
        raise FileNotFoundError(f"no TensorBoard logs at {root}: download them from {LOG_URL} "
                                "or set APOT_DATA_DIR")
    files = {(f"resnet{depth}", bit): root / f"res{depth}_{bit}bit.tfevents" for depth in (18, 34) for bit in (2, 3, 4, 5)}
    return {key: path for key, path in files.items() if path.is_file()}


def release_logs(root: str | Path | None = None) -> dict[tuple[str, int], dict]:
    """(arch, bit) -> scalars for the released runs in ``root`` (default ``$APOT_DATA_DIR/logs/imagenet``),
    files named ``res{18,34}_{bit}bit.tfevents``."""
    return {key: read_scalars(path) for key, path in _release_files(root).items()}


def release_log_times(root: str | Path | None = None) -> dict[tuple[str, int], tuple[float, float]]:
    """(arch, bit) -> the wall-clock times (seconds since 1970, UTC) of the first and the last value each released
    run logged: when it ran."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times = {}
    for key, path in _release_files(root).items():
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        stamps = [e.wall_time for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]
        times[key] = (min(stamps), max(stamps))
    return times
