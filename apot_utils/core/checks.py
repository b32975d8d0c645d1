"""Argument checks shared by every layer."""
from __future__ import annotations


def check_count(name: str, value, allow_none: bool = True) -> None:
    """Refuse a count that is not an integer of at least 1 (0 or a negative number is an error, never
    'all'); None passes when ``allow_none``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
