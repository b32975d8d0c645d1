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
    monkeypatch.setattr(aot, "KERNEL_DIR", folder)
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


@pytest.mark.parametrize("where", ["file writable by others", "folder writable by group", "file of another user"])
def test_a_package_someone_else_could_have_written_is_not_loaded(where, kernel_dir, loads):
    x = torch.randn(8)
    path = aot.package_path(identity, (x,), ({0: "n"},))
    path.write_bytes(b"\x7fELF planted")            # under the name the loader computes
    if where == "file writable by others":
        path.chmod(0o646)
    elif where == "folder writable by group":
        kernel_dir.chmod(0o775)
    else:
        if os.getuid() != 0:
            pytest.skip("changing a file's owner needs root")
        os.chown(path, 65534, 65534)
    with pytest.raises(aot.UntrustedKernel, match="not loaded"):
        aot.load(identity, (x,), ({0: "n"},))
    assert loads == []


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
