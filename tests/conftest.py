import os

import pytest

from apot_utils.files.data import reference_file as _locate


def reference_file(relative: str):
    """A file of the reference data under $APOT_DATA_DIR: skipped without it, a failure
    under APOT_REQUIRE_DATA=1 (CI)."""
    try:
        return _locate(relative)
    except FileNotFoundError as missing:
        if os.environ.get("APOT_REQUIRE_DATA") == "1":
            pytest.fail(str(missing))
        pytest.skip(str(missing))


@pytest.fixture(scope="session")
def ref():
    """:func:`reference_file`; a test that uses it (directly or through a fixture) is marked ``data``."""
    return reference_file

