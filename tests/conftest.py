import os
from pathlib import Path

import pytest


def reference_file(relative: str) -> Path:
    """A file of the reference data under $APOT_DATA_DIR: skipped without it, a failure
    under APOT_REQUIRE_DATA=1 (CI)."""
    root = os.environ.get("APOT_DATA_DIR")
    path = Path(root) / relative if root else None
    if path is not None and path.is_file():
        return path
    reason = f"reference data file {relative} not found (set APOT_DATA_DIR to the apot-data folder)"
    if os.environ.get("APOT_REQUIRE_DATA") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def ref():
    return reference_file
