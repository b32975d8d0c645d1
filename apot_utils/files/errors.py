"""The errors of reading and fetching files, shared by the modules of :mod:`apot_utils.files`."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the requested model."""


class DownloadError(CheckpointError):
    """A download that could not reach its server (offline): ``url`` and ``reason``."""

    def __init__(self, message: str, url: str = "", reason: str = ""):
        super().__init__(message)
        self.url, self.reason = url, reason
