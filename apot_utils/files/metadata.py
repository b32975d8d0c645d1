"""The JSON fields of an exported file's metadata (``.safetensors`` and ONNX keep their metadata as strings)."""
from __future__ import annotations

import json
from pathlib import Path


def json_field(path: str | Path, key: str, value: str):
    """``json.loads(value)``, or a ValueError that names the file and the key: for text that is not JSON, and for
    JSON nested so deeply that the parser gives up (a ``RecursionError`` naming nothing)."""
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError) as error:
        why = "nested too deeply to read" if isinstance(error, RecursionError) else "not JSON"
        raise ValueError(f"{path}: its metadata {key!r} is {why} ({value[:40]!r})") from None
