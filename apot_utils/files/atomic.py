"""Writing a file atomically: a temporary in the same folder, flushed to disk, renamed over the target; what an
interrupted or killed write leaves behind is removed. Every layer that writes a file uses it."""
from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .paths import process_alive


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_full(error: BaseException) -> bool:
    """Whether ``error`` or an error it was raised from is "no space left on device". torch.save reports a
    full disk as "[enforce fail at inline_container.cc] ... unexpected pos", the OSError as its context."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}.{os.getpid()}."


def remove_dead_temporaries(path: Path) -> list[Path]:
    """Delete the temporaries that :func:`write_atomically` left beside ``path`` in processes of this machine that
    no longer run (a SIGKILL between writing and renaming: ``.<name>.<host>.<pid>.<random>.tmp``; another
    machine's, on a shared folder, are left alone); returns them."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(socket.gethostname())}\.(\d{{1,9}})\.[^.]+\.tmp$")
    dead = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        match = pattern.match(tmp.name)
        if match and not process_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            dead.append(tmp)
    return dead


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, flush it to disk, then rename it
    over ``path``. An interrupted write leaves the previous file as it was and no temporary behind (a killed
    one's temporary, named with its process id, is removed by the next write of the same path); a full disk is an
    OSError that says so. The file gets the permissions a plain ``open`` would give it (0666
    less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(error):
            kept = f"the previous {path.name} is kept" if path.exists() else f"{path.name} was not written"
            raise OSError(errno.ENOSPC, f"no space left on the device of {path.parent} ({kept})") from None
        raise
    return path
