"""The commands behind ``python -m apot_utils``: argument checks, metadata and logging on top of the
library. Only :mod:`apot_utils.cli` imports them; each is also callable from Python."""
