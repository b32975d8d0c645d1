"""Project-wide pytest hooks (tests/ and notebooks/)."""
import os

import pytest


def pytest_collection_modifyitems(config, items):
    """Markers that say what a test needs: ``data`` on every test that reads the reference data (it uses
    the ``ref`` fixture, directly or through another fixture) and on every notebook cell (its stored
    outputs were computed from that data); ``slow`` on the notebook cells as well.

    Without APOT_DATA_DIR the notebook cells are skipped with the reason (the tests skip themselves, in
    ``ref``); under APOT_REQUIRE_DATA=1 they run (and fail loudly)."""
    from apot_utils.files.paths import reference_dir

    root = reference_dir()
    have_data = (root is not None and root.is_dir()) or os.environ.get("APOT_REQUIRE_DATA") == "1"
    skip = pytest.mark.skip(reason="notebook outputs are computed from the reference data: set APOT_DATA_DIR")
    for item in items:
        notebook = str(item.fspath).endswith(".ipynb")
        if notebook or "ref" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
        if notebook:
            item.add_marker(pytest.mark.slow)
            if not have_data:
                item.add_marker(skip)
