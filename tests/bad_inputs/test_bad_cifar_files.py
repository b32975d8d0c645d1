"""CIFAR-10 data files that cannot be used: bad .npz arrays, a single .npy, and JPEG zips with damaged
members, unknown classes, other sizes or non-images. Each error names the file (and the member)."""
import io
import urllib.error
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from apot_utils.files import data
from apot_utils.fakequant.spec import ModelSpec


@pytest.fixture
def checkpoint(tmp_path):
    """A random 3-bit ResNet-20 checkpoint (the data is what is wrong in these tests)."""
    path = tmp_path / "model.pth.tar"
    torch.save({"state_dict": ModelSpec("cifar10", "resnet20", 3).build().state_dict(),
                "meta": {"dataset": "cifar10", "arch": "resnet20", "bit": 3}}, path)
    return path


def npz(tmp_path, x, y, name="bad.npz"):
    path = tmp_path / name
    np.savez(path, x=x, y=y)
    return path


def write_bytes(path, content: bytes):
    path.write_bytes(content)
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
    (lambda p: np.save(p / "x.npy", IMAGES) or p / "x.npy", "is a single array (.npy)"),
])
def test_bad_npz_files(make, message, tmp_path, cli, checkpoint):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        data.load_npz(path)
    run = cli("validate", "--bit", "3", "--checkpoint", checkpoint, "--data", path)
    run.assert_clean_error(str(path))
    assert "allow_pickle" not in run.err


def jpeg(size=(32, 32), seed=0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def jpeg_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def corrupt_member(path, name: str):
    """Flip bytes inside ``name``'s compressed data: its CRC no longer matches."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 2, start + min(12, info.compress_size)):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


GOOD = {"test/cat/0000.jpg": jpeg(seed=1), "test/dog/0000.jpg": jpeg(seed=2)}


@pytest.mark.parametrize("make, message", [
    (lambda p: corrupt_member(jpeg_zip(p / "d.zip", {**GOOD, "test/cat/0001.jpg": jpeg(seed=3)}), "test/cat/0001.jpg"),
     "member test/cat/0001.jpg is"),
    (lambda p: jpeg_zip(p / "u.zip", {**GOOD, "test/kitten/0000.jpg": jpeg()}), "folders that are not CIFAR-10 classes: ['kitten']"),
    (lambda p: jpeg_zip(p / "big.zip", {"test/cat/0000.jpg": jpeg((64, 64))}), "member test/cat/0000.jpg is 64×64 pixels"),
    (lambda p: jpeg_zip(p / "mixed.zip", {**GOOD, "test/cat/0002.jpg": jpeg((40, 32))}), "member test/cat/0002.jpg is 40×32 pixels"),
    (lambda p: jpeg_zip(p / "text.zip", {**GOOD, "test/cat/0003.jpg": b"no picture here"}), "member test/cat/0003.jpg is not a readable image"),
])
def test_bad_jpeg_zips(make, message, tmp_path, cli, checkpoint):
    path = make(tmp_path)
    run = cli("validate", "--bit", "3", "--checkpoint", checkpoint, "--data", path)
    run.assert_clean_error(str(path), message)
    assert "BytesIO" not in run.err and "tuple.index" not in run.err


def test_a_good_jpeg_zip_reads(tmp_path):
    arrays = data.load_jpeg_zip(jpeg_zip(tmp_path / "ok.zip", GOOD), "test", progress=False)
    assert arrays.x.shape == (2, 32, 32, 3) and arrays.y.tolist() == [3, 5]


def test_torchvision_offline_is_one_line(monkeypatch, cli, checkpoint):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    cli("validate", "--bit", "3", "--checkpoint", checkpoint, "--data", "torchvision").assert_clean_error(
        "could not be downloaded", "APOT_DATA_DIR")


def test_offline_validate_scores_the_exact_images_and_says_so(monkeypatch, cli, ref):
    """No network and APOT_DATA_DIR set: validate scores the exact first 1,000 test images (not the lossy JPEG
    copy), names the cause (no network) and which images, and how to ask for the JPEG copy."""
    import torchvision

    ref("cifar10/test_first1000_lossless.npz")

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    run = cli("validate", "--bit", "3", "--limit", "100")
    assert run.status == 0, run.err
    assert "could not be downloaded (no network" in run.out
    assert "scoring the exact first 1,000 test images" in run.out and "test_jpeg.npz" in run.out
    assert "FileNotFoundError" not in run.out + run.err


def test_an_npz_that_declares_more_images_than_it_holds_is_refused_before_allocating(tmp_path):
    """A small file whose x.npy header declares 300,000 images: refused from the header and the zip's directory,
    before 921 MB are allocated; a header that does not parse is named too."""
    def member(shape, dtype, payload: bytes) -> bytes:
        out = io.BytesIO()
        np.lib.format.write_array_header_1_0(out, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
        return out.getvalue() + payload

    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(forged, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", member((300000, 32, 32, 3), np.uint8, b"\0" * 100_000))
        archive.writestr("y.npy", member((300000,), np.int64, b"\0" * 800))
    with pytest.raises(ValueError, match="x.npy declares shape"):
        data.load_npz(forged)
    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '|u1', \n")
    with pytest.raises(ValueError, match="no readable array header"):
        data.load_npz(broken)
