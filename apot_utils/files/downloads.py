"""Downloads checked by checksum (sha256, or a file's git object id) before they appear under their name, resumed
after an interruption, and the digests themselves."""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .errors import CheckpointError, DownloadError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_of(path: Path) -> str:
    """The git object id of the file at ``path``: sha1 of ``blob <size>\\0`` and its bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _new_folders(folder: Path) -> list[Path]:
    """The folders that ``folder.mkdir(parents=True)`` would create, deepest first."""
    created = []
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    return created


def download_verified(url: str, dest: Path, sha256: str | None, git_blob: str | None = None) -> Path:
    """Download ``url`` to ``dest``, checked by ``sha256`` (else by its git object id ``git_blob``) before it appears
    under its name.

    The bytes go to ``dest.part``; an interrupted download leaves it for the next call, which resumes
    it (an HTTP Range request; a server that ignores the range sends the whole file again). A file
    that does not match ``sha256`` is removed. A download that received nothing leaves nothing
    behind, not even the folders it created."""
    created = _new_folders(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                resumed = have > 0 and getattr(response, "status", None) == 206
                length = int(response.headers.get("Content-Length") or 0)
                with open(part, "ab" if resumed else "wb") as out, \
                        tqdm(total=(length + (have if resumed else 0)) or None, initial=have if resumed else 0,
                             unit="B", unit_scale=True, desc=dest.name) as bar:
                    received = 0
                    for block in iter(lambda: response.read(1 << 16), b""):
                        out.write(block)
                        bar.update(len(block))
                        received += len(block)
                    out.flush()
                    os.fsync(out.fileno())
                if length and received < length:
                    raise ConnectionError(f"the download of {url} stopped after {received} of {length} bytes; "
                                          f"run again to resume it ({part} is kept)")
        except urllib.error.HTTPError as error:
            if not (error.code == 416 and have):       # 416: the part is already whole; check it below
                raise
        if (sha256_of(part) != sha256) if sha256 else (git_blob_of(part) != git_blob):
            part.unlink()
            what = f"sha256 {sha256}" if sha256 else f"git object id {git_blob}"
            raise CheckpointError(f"download of {url} does not match {what}: removed it")
        os.replace(part, dest)
    except BaseException as error:
        if part.is_file() and part.stat().st_size == 0:
            part.unlink()
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(error, urllib.error.URLError):
            raise DownloadError(f"could not download {url} ({error.reason})", url, str(error.reason)) from None
        raise
    return dest
