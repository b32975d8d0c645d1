"""The installed package's version (``pyproject.toml``), or ``0+unknown`` for a source tree that is not installed."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("apot-utils")
except PackageNotFoundError:
    __version__ = "0+unknown"
