"""Where ``apot_utils`` reads and writes files, and the environment variables that move them.

- ``APOT_DATA_DIR``: the reference data copy (released checkpoints, the authors' logs, exact test images);
  read only. :func:`reference_dir`.
- the data folder for downloads and caches (:func:`data_root`): ``data/`` of a source checkout (the
  repository this package sits in), else a user cache folder, ``$XDG_CACHE_HOME/apot-notebooks`` or
  ``~/.cache/apot-notebooks``, so that an installed package never writes into site-packages;
  ``APOT_CACHE_DIR`` overrides both.
- ``APOT_KERNEL_DIR``: the compiled kernels (default ``<data root>/kernels``).

Each is read when it is used (every call of the functions below), so that setting one after ``import apot_utils``
takes effect.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent     # apot_utils/


def source_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The repository root when the package is used from a source checkout (an editable install or
    ``PYTHONPATH=.``), else None (an installed wheel)."""
    root = package_dir.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def data_root(package_dir: Path = PACKAGE_DIR) -> Path:
    """The folder for downloads and caches (module docstring)."""
    if os.environ.get("APOT_CACHE_DIR"):
        return Path(os.environ["APOT_CACHE_DIR"])
    checkout = source_checkout(package_dir)
    if checkout is not None:
        return checkout / "data"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "apot-notebooks"


def reference_dir() -> Path | None:
    """``APOT_DATA_DIR`` (the reference data copy) if set."""
    value = os.environ.get("APOT_DATA_DIR")
    return Path(value) if value else None


def kernel_dir() -> Path:
    """``APOT_KERNEL_DIR``, else ``<data root>/kernels``."""
    return Path(os.environ.get("APOT_KERNEL_DIR") or data_root() / "kernels")


def checkpoint_cache() -> Path:
    """Where downloaded checkpoints are kept: ``<data root>/checkpoints``."""
    return data_root() / "checkpoints"


def fetch_dest() -> Path:
    """Where ``fetch`` builds the reference data layout unless told: ``<data root>/reference``."""
    return data_root() / "reference"


SHIPPED_DIR = (source_checkout() or PACKAGE_DIR.parent) / "checkpoints"   # checkpoints this project made (see its README)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # another user's process
        return True
    return True


def new_file(out: str | Path, suffix: str | None = None) -> Path:
    """``out`` as the path of a file about to be written: refused if it exists (nothing is ever overwritten)
    or, with ``suffix``, if its name does not end in it."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose another --out (nothing was overwritten)")
    if suffix is not None and out.suffix != suffix:
        if out.name == suffix:         # '.safetensors' alone is a hidden file's name, without a suffix
            raise ValueError(f"{out} has no name before {suffix}: give it one, e.g. {out.with_name('model' + suffix)}")
        raise ValueError(f"the file's name must end in {suffix}, got {out.name}")
    return out


def why_not(path: str | Path, want: str = "file") -> str:
    """Why ``path`` is not a ``want`` ('file' or 'folder') this package can read, in words: it does not exist, is a
    symbolic link to nothing or a loop, is a FIFO, socket or device, or is the other of file and folder."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
        return f"{path} does not exist"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{path} is a loop of symbolic links"
        return f"{path} cannot be read ({error.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return f"{path} is a folder, not a {want}" if want != "folder" else f"{path} is a folder"
    if stat.S_ISREG(info.st_mode):
        return f"{path} is a file, not a {want}" if want != "file" else f"{path} is a file"
    kind = ("FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "socket" if stat.S_ISSOCK(info.st_mode)
            else "device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "special file")
    return f"{path} is a {kind}, not a {want}"
