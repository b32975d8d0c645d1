"""The kernel cache under attack or stuck (issue 37, items 10 and 11): a package that another user could have
written is never loaded (loading a package runs its library's code), and a build lock held by a stopped or hung
process is waited for with a message and a time limit, then the eager kernels take over."""
import fcntl
import os

import pytest
import torch

from apot_utils.fast import aot, projection
from apot_utils.core.levels import level_set


def identity(x):
    return x + 0


@pytest.fixture
def kernel_dir(tmp_path, monkeypatch):
    folder = tmp_path / "kernels"
    folder.mkdir(mode=0o755)
    monkeypatch.setenv("APOT_KERNEL_DIR", str(folder))
    return folder


@pytest.fixture
def loads(monkeypatch):
    """The package paths the loader was asked to open (the loader itself never runs)."""
    opened = []

    class Loader:
        def __init__(self, path, *args):
            opened.append(path)
            raise RuntimeError("not a real package")

    monkeypatch.setattr(torch._C._aoti, "AOTIModelPackageLoader", Loader)
    return opened


@pytest.mark.parametrize("where", ["file of another user", "file anyone may write"])
def test_a_package_someone_else_could_have_written_is_not_loaded(where, kernel_dir, loads):
    x = torch.randn(8)
    path = aot.package_path(identity, (x,), ({0: "n"},))
    path.write_bytes(b"\x7fELF planted")            # under the name the loader computes
    if where == "file of another user":
        if os.getuid() != 0:
            pytest.skip("changing a file's owner needs root")
        os.chown(path, 65534, 65534)
    else:
        path.chmod(0o666)
    with pytest.raises(aot.UntrustedKernel, match="not loaded"):
        aot.load(identity, (x,), ({0: "n"},))
    assert loads == []


def test_this_users_group_writable_folder_and_package_are_tightened_not_refused(kernel_dir, loads):
    """umask 002, or an earlier version, left the kernel folder 775 and its packages 664: they are this user's, so
    the group write bit is dropped and the package loads (here: the loader is asked for it)."""
    x = torch.randn(8)
    path = aot.package_path(identity, (x,), ({0: "n"},))
    path.write_bytes(b"not a package")
    kernel_dir.chmod(0o775)
    path.chmod(0o664)
    with pytest.raises(RuntimeError, match="could not load the kernel package"):
        aot.load(identity, (x,), ({0: "n"},))
    assert loads == [str(path)]
    assert kernel_dir.stat().st_mode & 0o777 == 0o755 and path.stat().st_mode & 0o777 == 0o644


def test_a_package_of_this_user_is_loaded(kernel_dir, loads):
    x = torch.randn(8)
    path = aot.package_path(identity, (x,), ({0: "n"},))
    path.write_bytes(b"not a package")
    path.chmod(0o644)
    with pytest.raises(RuntimeError, match="could not load the kernel package"):
        aot.load(identity, (x,), ({0: "n"},))
    assert loads == [str(path)]


def test_a_held_build_lock_is_waited_for_then_the_eager_kernel_computes(kernel_dir, monkeypatch, capfd):
    monkeypatch.setenv("APOT_KERNEL_LOCK_TIMEOUT", "1")
    monkeypatch.setattr(projection, "_checked", {})
    holder = open(kernel_dir / ".lock", "w")        # another open file: flock conflicts as another process's would
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        levels = level_set(4)
        x = torch.rand(1 << 17)
        with pytest.warns(UserWarning, match="build lock"):
            y = projection.project(x, levels)
    finally:
        holder.close()
    assert "waiting for another process's kernel build" in capfd.readouterr().err
    with projection_off():
        assert torch.equal(y, projection.project(x, levels))


class projection_off:
    """APOT_COMPILE=0 inside the block: the eager lookup."""
    def __enter__(self):
        self.old = os.environ.get("APOT_COMPILE")
        os.environ["APOT_COMPILE"] = "0"

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("APOT_COMPILE")
        else:
            os.environ["APOT_COMPILE"] = self.old


def test_a_package_that_fails_to_load_leaves_nothing_behind(kernel_dir):
    """The loader unpacks a package (about 1.6 MB) into a temporary folder and removed it only after a load that
    worked: a package whose library is cut short left one in /tmp on every run. (Builds a real package, ~12 s.)"""
    import zipfile

    x = torch.randn(8)
    assert torch.equal(aot.load(identity, (x,), ({0: "n"},))(x), x)
    path = aot.package_path(identity, (x,), ({0: "n"},))
    cut = path.with_name(path.name + ".cut")
    with zipfile.ZipFile(path) as whole, zipfile.ZipFile(cut, "w") as damaged:
        for info in whole.infolist():
            content = whole.read(info)
            damaged.writestr(info, content[:200] if info.filename.endswith(".so") else content)
    os.replace(cut, path)
    path.chmod(0o644)
    before = set(aot.loader_scratch().iterdir())
    with pytest.raises(RuntimeError, match="could not load the kernel package"):
        aot.load(identity, (x,), ({0: "n"},))
    assert set(aot.loader_scratch().iterdir()) == before


def test_the_unpacked_packages_of_killed_processes_are_removed(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"apot-kernels.{socket.gethostname()}.{int(finished.stdout)}"
    (dead / "aotinductor_x1").mkdir(parents=True)
    living = tmp_path / f"apot-kernels.{socket.gethostname()}.{os.getppid()}"      # a process that still runs
    living.mkdir()
    aot.loader_scratch.cache_clear()
    try:
        mine = aot.loader_scratch()
        assert mine.parent == tmp_path and mine.name.endswith(f".{os.getpid()}")
        assert not dead.exists() and living.exists()
    finally:
        aot.loader_scratch.cache_clear()
