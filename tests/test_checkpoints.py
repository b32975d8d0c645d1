import pickle
import shutil

import pytest
import torch

from apot_utils.files import checkpoints, data, downloads
from apot_utils.fakequant.loading import load_into
from apot_utils.files.checkpoints import CheckpointError, read_checkpoint
from apot_utils.fakequant.layers import alphas
from apot_utils.fakequant.spec import ModelSpec
from apot_utils.fakequant.loading import load_model
from apot_utils.fakequant.evaluate import validate_cifar10

# The README's published 3-bit output (rounded to 3 decimals), layer by layer.
PUBLISHED_3BIT_ALPHAS = [
    (1.569, 1.438), (1.278, 0.966), (1.607, 1.293), (1.426, 1.055), (1.364, 1.720),
    (1.511, 1.434), (1.600, 2.204), (1.552, 1.530), (0.934, 1.939), (1.427, 2.232),
    (1.463, 1.371), (1.440, 2.432), (1.560, 1.475), (1.605, 2.462), (1.436, 1.619),
    (1.292, 2.147), (1.423, 2.329), (1.428, 1.551), (1.322, 2.574), (1.687, 1.314),
]


def release_file(ref, bit):
    return ref(f"checkpoints/cifar10/res20_{bit}bit.pth.tar")


@pytest.mark.parametrize("bit", [2, 3, 4, 32])
def test_released_checkpoints_load(ref, bit):
    model = ModelSpec("cifar10", "resnet20", bit).build()
    extra = load_into(model, release_file(ref, bit))
    assert extra["best_prec"] == checkpoints.RELEASED[("cifar10", "resnet20", bit)].published_accuracy
    assert len(alphas(model)) == (0 if bit == 32 else 20)


def test_3bit_alphas_are_the_published_ones(ref, capsys):
    model = load_model("cifar10", "resnet20", 3, release_file(ref, 3))
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("weight alpha")]
    expected = [f"weight alpha: {w:.3f}, act alpha: {a:.3f}" for w, a in PUBLISHED_3BIT_ALPHAS]
    assert printed == expected
    assert [(round(w, 3), round(a, 3)) for _, w, a in alphas(model)] == PUBLISHED_3BIT_ALPHAS


def test_3bit_first_batch_matches_published_output(ref):
    """The release's README (a GPU): Loss 0.2144, Prec 96.000% on the first 100 test images. Another machine's
    float32 summation order moves activations that sit on a level midpoint (tests/test_validation.py), so the
    loss is compared within 0.005 and the accuracy within one image."""
    model = load_model("cifar10", "resnet20", 3, release_file(ref, 3))
    result = validate_cifar10(model, data.load_npz(ref("cifar10/test_first100_lossless.npz")), "cpu")
    assert abs(result.top1 - 96.0) <= 1.0
    assert abs(result.loss - 0.2144) < 0.005


@pytest.mark.parametrize("bit, wrong", [(3, 4), (32, 2), (2, 32)])
def test_wrong_bitwidth_is_refused_and_model_untouched(ref, bit, wrong):
    model = ModelSpec("cifar10", "resnet20", wrong).build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="checkpoint|fit"):
        load_into(model, release_file(ref, bit))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrong_architecture_is_refused(ref, tmp_path):
    state = read_checkpoint(release_file(ref, 3))["state_dict"]
    path = tmp_path / "anonymous.pth"
    torch.save({"state_dict": state}, path)       # same tensors, no release hash: only shapes tell
    with pytest.raises(CheckpointError, match="does not fit"):
        load_into(ModelSpec("cifar10", "resnet32", 3).build(), path)


class _Payload:
    def __reduce__(self):
        return (print, ("this ran arbitrary code",))


def test_malicious_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "x": _Payload()}, f)
    torch.save({"state_dict": {}, "x": _Payload()}, tmp_path / "evil_zip.pth")
    for p in (path, tmp_path / "evil_zip.pth"):
        with pytest.raises(CheckpointError, match="only trusted checkpoints"):
            read_checkpoint(p)
    assert "this ran arbitrary code" not in capsys.readouterr().out


def test_truncated_file_is_refused(ref, tmp_path):
    path = tmp_path / "cut.pth.tar"
    path.write_bytes(release_file(ref, 3).read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)


def test_release_path_verifies_and_caches(ref, tmp_path, monkeypatch):
    monkeypatch.setenv("APOT_DATA_DIR", str(ref("checkpoints/cifar10/res20_3bit.pth.tar").parents[2]))
    assert checkpoints.release_path("cifar10", "resnet20", 3).name == "res20_3bit.pth.tar"
    monkeypatch.delenv("APOT_DATA_DIR")
    monkeypatch.setenv("APOT_CACHE_DIR", str(tmp_path))
    bad = tmp_path / "checkpoints" / "res20_3bit.pth.tar"
    bad.parent.mkdir()
    bad.write_bytes(b"not the file")
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoints.release_path("cifar10", "resnet20", 3)
    with pytest.raises(CheckpointError, match="released no resnet20 5-bit"):
        checkpoints.release_path("cifar10", "resnet20", 5)
    with pytest.raises(CheckpointError, match="ImageNet checkpoints are on Google Drive .*--checkpoint PATH"):
        checkpoints.release_path("imagenet", "resnet18", 4)


def test_download_is_verified_and_atomic(ref, tmp_path):
    source = tmp_path / "source.bin"
    shutil.copy(release_file(ref, 2), source)
    dest = tmp_path / "out" / "res20_2bit.pth.tar"
    entry = checkpoints.RELEASED[("cifar10", "resnet20", 2)]
    with pytest.raises(CheckpointError, match="sha256"):
        downloads.download_verified(source.as_uri(), dest, "0" * 64)
    assert not dest.parent.exists() or not any(dest.parent.iterdir())   # nothing left behind
    assert downloads.download_verified(source.as_uri(), dest, entry.sha256) == dest
    assert downloads.sha256_of(dest) == entry.sha256
    with pytest.raises(CheckpointError, match="could not download "):
        downloads.download_verified((tmp_path / "absent.bin").as_uri(), tmp_path / "out" / "other", entry.sha256)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["res20_2bit.pth.tar"]


def test_imagenet_release_layout_loads(ref):
    import json

    keys = json.loads(ref("reference/imagenet_resnet18_release_keys.json").read_text())
    model = ModelSpec("imagenet", "resnet18", 4).build()
    state = {k: torch.zeros(shape) for k, shape in keys.items()}
    converted = checkpoints.to_model_keys(state)
    checkpoints.check_state_dict(model, converted)          # no missing or unexpected keys
    model.load_state_dict(converted)
    assert len(alphas(model)) == 19


def test_the_release_logs_read_with_their_clock(ref):
    """release_logs gives every released ImageNet run's scalars, release_log_times when each ran (first and last
    value logged); both read the same files. The runs were logged in May 2020 (after the paper, posted in 2019)."""
    import datetime

    from apot_utils.files.tblogs import release_log_times, release_logs

    root = ref("logs/imagenet/res18_4bit.tfevents").parent
    logs, times = release_logs(root), release_log_times(root)
    assert set(logs) == set(times) and ("resnet18", 4) in logs
    for key, (first, last) in times.items():
        assert first < last and "lr" in logs[key], key
        assert datetime.datetime.fromtimestamp(first, datetime.timezone.utc).year == 2020, key
