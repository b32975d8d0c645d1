"""Files and folders around the data: permissions that follow the umask, fetch repairing a damaged image
file, messages that name a missing reference file, kernel builds that were killed, downloads that fail,
where an installed (not checked-out) package keeps its data, and the chapters without the data."""
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from apot_utils.files import checkpoints, downloads, fetch, paths
from apot_utils.fast import aot


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(downloads.urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(umask, mode, tmp_path, ref):
    """Checkpoints, exports and fetched files get what a plain open() would give them, not mkstemp's 0600."""
    from apot_utils.commands.export import export_checkpoint

    previous = os.umask(umask)
    try:
        saved = checkpoints.save_checkpoint({"state_dict": {}}, tmp_path / "a.pth.tar")
        exported = export_checkpoint("cifar10", "resnet20", 2, ref("checkpoints/cifar10/res20_2bit.pth.tar"),
                                     tmp_path / "b.safetensors", log=lambda line: None)
        fetch._copy_verified(ref("cifar10/test_first100_lossless.npz"), tmp_path / "c.npz", lambda p: True, "images")
    finally:
        os.umask(previous)
    assert [oct(p.stat().st_mode & 0o777) for p in (saved, exported, tmp_path / "c.npz")] == [oct(mode)] * 3


def damage_truncated(path):
    path.write_bytes(path.read_bytes()[:1000])


def damage_garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(5000))


def damage_keys(path):
    np.savez(path, images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.zeros(2, np.int64))


@pytest.mark.parametrize("damage", [damage_truncated, damage_garbage, damage_keys])
def test_fetch_replaces_a_damaged_image_file(damage, ref, tmp_path, monkeypatch, capsys):
    from apot_utils.cli import main

    monkeypatch.setattr(fetch, "PUBLIC_FILES", [])       # only the exact test images here
    monkeypatch.setattr(fetch, "LOCAL_ONLY", {})
    source, dest = ref("cifar10/test_first100_lossless.npz").parents[1], tmp_path / "reference"
    assert main(["fetch", "--dest", str(dest), "--from", str(source)]) == 0
    target = dest / "cifar10/test_first100_lossless.npz"
    damage(target)
    capsys.readouterr()
    assert main(["fetch", "--dest", str(dest), "--from", str(source)]) == 0
    assert "damaged cifar10/test_first100_lossless.npz" in capsys.readouterr().out
    assert fetch.images_digest(target) == fetch.EXACT_TEST_DIGESTS[100]


@pytest.mark.parametrize("damage", [damage_truncated, damage_garbage, damage_keys])
def test_fetch_reports_a_damaged_source_in_one_line(damage, ref, tmp_path, monkeypatch, cli):
    monkeypatch.setattr(fetch, "PUBLIC_FILES", [])
    monkeypatch.setattr(fetch, "LOCAL_ONLY", {})
    source = tmp_path / "source"
    (source / "cifar10").mkdir(parents=True)
    for count in fetch.EXACT_TEST_DIGESTS:
        name = f"cifar10/test_first{count}_lossless.npz"
        (source / name).write_bytes(ref(name).read_bytes())
    damage(source / "cifar10/test_first100_lossless.npz")
    run = cli("fetch", "--dest", tmp_path / "dest", "--from", source)
    run.assert_clean_error("test_first100_lossless.npz is not the expected CIFAR-10 test images")
    assert not (tmp_path / "dest/cifar10/test_first100_lossless.npz").exists()


def test_a_reference_folder_that_lacks_the_file_is_named(tmp_path, monkeypatch, offline, cli):
    monkeypatch.setenv("APOT_DATA_DIR", str(tmp_path / "reference"))
    monkeypatch.setenv("APOT_CACHE_DIR", str(tmp_path / "cache"))
    run = cli("validate", "--bit", "3", "--limit", "1")
    run.assert_clean_error(f"{tmp_path / 'reference' / 'checkpoints/cifar10/res20_3bit.pth.tar'} does not exist",
                           "could not be downloaded (no network)")
    assert "set APOT_DATA_DIR" not in run.err
    from apot_utils.files.data import reference_file

    with pytest.raises(FileNotFoundError, match="APOT_DATA_DIR .* lacks cifar10/test_jpeg.npz"):
        reference_file("cifar10/test_jpeg.npz")


def test_a_killed_kernel_build_leaves_no_scratch_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("APOT_KERNEL_DIR", str(tmp_path))
    stale = tmp_path / ".building-k1ll3d"
    (stale / "partial").mkdir(parents=True)
    built = []

    def build(fn, args, dynamic, path):        # stands in for AOTInductor: the test is about the folder
        built.append(path)
        path.write_bytes(b"not a package")

    monkeypatch.setattr(aot, "_build", build)
    with pytest.raises(RuntimeError, match="could not load the kernel package"):
        aot.load(lambda x: x + 1, (torch.zeros(4),), (None,))
    assert built and not stale.exists()


def test_failed_download_leaves_no_folder(monkeypatch, tmp_path, offline):
    monkeypatch.setenv("APOT_CACHE_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("APOT_DATA_DIR", raising=False)
    with pytest.raises(checkpoints.CheckpointError, match="could not download"):
        checkpoints.release_path("cifar10", "resnet20", 3)
    assert not (tmp_path / "data").exists()


def test_an_installed_package_keeps_its_data_in_a_user_cache(tmp_path, monkeypatch):
    """From a wheel in site-packages the data root is the user's cache folder; from a checkout, its data/."""
    monkeypatch.delenv("APOT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    installed = tmp_path / "lib/python3.11/site-packages/apot_utils"
    installed.mkdir(parents=True)
    assert paths.source_checkout(installed) is None
    assert paths.data_root(installed) == tmp_path / "cache" / "apot-notebooks"
    checkout = paths.PACKAGE_DIR
    assert paths.data_root(checkout) == checkout.parent / "data"
    monkeypatch.setenv("APOT_CACHE_DIR", str(tmp_path / "mine"))
    assert paths.data_root(installed) == tmp_path / "mine"


def test_the_folders_follow_the_environment_after_import(tmp_path, monkeypatch):
    """The folders are read when used: set after ``import apot_utils``, APOT_CACHE_DIR moves the downloads, the
    fetched layout and the kernels, and APOT_KERNEL_DIR the kernels alone."""
    monkeypatch.delenv("APOT_KERNEL_DIR", raising=False)
    monkeypatch.setenv("APOT_CACHE_DIR", str(tmp_path / "cache"))
    assert paths.checkpoint_cache() == tmp_path / "cache" / "checkpoints"
    assert paths.fetch_dest() == tmp_path / "cache" / "reference"
    assert aot.package_path(lambda x: x, (torch.zeros(2),), (None,)).parent == tmp_path / "cache" / "kernels"
    monkeypatch.setenv("APOT_KERNEL_DIR", str(tmp_path / "kernels"))
    assert aot.package_path(lambda x: x, (torch.zeros(2),), (None,)).parent == tmp_path / "kernels"


def test_offline_chapters_get_a_resnet20_shaped_stand_in(monkeypatch, tmp_path, offline):
    """Chapters 01-02 use the released weights by layer name; offline they get a seeded random ResNet-20's."""
    from apot_utils.notebook import analysis

    monkeypatch.setenv("APOT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("APOT_DATA_DIR", raising=False)
    state = torch.random.get_rng_state()
    layers, source = analysis.resnet20_weights()
    assert torch.equal(torch.random.get_rng_state(), state)                 # the caller's random state is untouched
    assert source.startswith("randomly initialized ResNet-20, no released checkpoint") and "could not download" in source
    assert "layer3.0.conv2" in layers and torch.equal(layers["layer1.0.conv1"], analysis.resnet20_weights()[0]["layer1.0.conv1"])


def test_notebooks_skip_with_the_reason_without_reference_data():
    """A fresh clone without APOT_DATA_DIR: the chapters' cells skip, saying why (CI sets the data and runs them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("APOT_DATA_DIR", "APOT_REQUIRE_DATA")}
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          str(root / "notebooks" / "07_integer_inference.ipynb")],
                         capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "passed" not in run.stdout.splitlines()[-1] and "skipped" in run.stdout.splitlines()[-1]
    assert "notebook outputs are computed from the reference data: set APOT_DATA_DIR" in run.stdout


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """SIGKILL between writing and renaming leaves a full-size hidden temporary: the next write of that path
    removes it (its process is gone), and leaves a live process's alone."""
    import os
    import subprocess

    from apot_utils.files.atomic import write_atomically

    import socket

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    dead = tmp_path / f".model.pth.tar.{host}.{gone.pid}.abc123.tmp"
    live = tmp_path / f".model.pth.tar.{host}.{os.getpid()}.def456.tmp"
    elsewhere = tmp_path / f".model.pth.tar.another-host.{gone.pid}.ghi789.tmp"      # a shared folder's other machine
    other_file = tmp_path / f".model.pth.tar.7.{host}.{gone.pid}.jkl012.tmp"        # model.pth.tar.7's temporary
    for tmp in (dead, live, elsewhere, other_file):
        tmp.write_bytes(b"x" * 1000)
    write_atomically(tmp_path / "model.pth.tar", lambda f: f.write(b"done"))
    assert not dead.exists() and live.exists() and elsewhere.exists() and other_file.exists()
    assert (tmp_path / "model.pth.tar").read_bytes() == b"done"


@pytest.mark.parametrize("make, message", [
    (lambda p: os.mkfifo(p / "pipe.npz") or p / "pipe.npz", "is a FIFO (named pipe), not a file"),
    (lambda p: os.symlink(p / "gone.npz", p / "link.npz") or p / "link.npz", "symbolic link to"),
    (lambda p: (os.symlink(p / "b.npz", p / "a.npz"), os.symlink(p / "a.npz", p / "b.npz")) and p / "a.npz",
     "loop of symbolic links"),
])
def test_a_path_that_is_no_file_says_what_it_is(make, message, tmp_path, cli, ref):
    ref("checkpoints/cifar10/res20_3bit.pth.tar")                # --data is checked after the released model loads
    path = make(tmp_path)
    cli("validate", "--bit", "3", "--data", path, "--limit", "1").assert_clean_error(message)
    cli("validate", "--bit", "3", "--checkpoint", path, "--limit", "1").assert_clean_error(message)


def test_an_npz_given_as_an_imagenet_folder_says_it_is_a_file(tmp_path):
    from apot_utils.files import imagenet

    path = tmp_path / "images.npz"
    path.write_bytes(b"PK")
    with pytest.raises(FileNotFoundError, match="images.npz is a file, not a folder"):
        imagenet.imagenet_val_loader(path, 8, 0)


def test_a_zip_member_that_declares_a_gigabyte_is_refused_before_reading(tmp_path):
    import zipfile

    from apot_utils.files import data

    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("test/cat/0001.jpg", b"\0" * (8 << 20))     # 8 MiB of zeros: a few kB compressed
    with pytest.raises(ValueError, match="declares 8,388,608 bytes"):
        data.load_jpeg_zip(path, "test", progress=False)



def test_a_checkpoint_saved_without_crcs_loads(tmp_path):
    """torch.serialization.set_crc32_options(False) writes 0 as every member's CRC: a valid file, not bit rot."""
    import torch

    from apot_utils.files import checkpoints

    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"state_dict": {"w": torch.ones(3)}}, tmp_path / "nocrc.pth.tar")
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(checkpoints.read_checkpoint(tmp_path / "nocrc.pth.tar")["state_dict"]["w"], torch.ones(3))


def test_the_resnet56_release_is_named_as_released_and_verified_by_its_git_object_id(ref, tmp_path, monkeypatch,
                                                                                      offline, cli):
    """The authors' repository releases ResNet-56 checkpoints (CIFAR10/result/res56_*): asked for one, validate tries
    to download it (refused here: offline) instead of saying that none was released; the file would be verified by
    its git object id, computed as git computes it (checked on a released ResNet-20 file against the id in the
    authors' tree)."""
    assert downloads.git_blob_of(ref("checkpoints/cifar10/res20_3bit.pth.tar")) == "01023ccf82f132348693a9aec92ed266a54a9487"
    released = {bit: checkpoints.RELEASED[("cifar10", "resnet56", bit)] for bit in (2, 3, 4, 32)}
    assert {bit: r.published_accuracy for bit, r in released.items()} == {2: 93.05, 3: 93.77, 4: 93.93, 32: 94.46}
    images = ref("cifar10/test_first100_lossless.npz")
    monkeypatch.setenv("APOT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("APOT_DATA_DIR", raising=False)
    run = cli("validate", "--arch", "resnet56", "--bit", "3", "--limit", "1", "--data", images)
    run.assert_clean_error("could not download", "res56_3bit/model_best.pth.tar")
    assert "released no" not in run.err
    fake = tmp_path / "res56_3bit.pth.tar"
    fake.write_bytes(b"not the file")
    assert not released[3].verifies(fake)


def test_fetch_offline_suggests_its_own_flag(tmp_path, offline, cli):
    run = cli("fetch", "--dest", tmp_path / "dest")
    run.assert_clean_error("could not download", "fetch --from FOLDER")
    assert "--checkpoint" not in run.err
