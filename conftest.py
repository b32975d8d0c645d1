"""Project-wide pytest hooks (tests/ and notebooks/)."""
import os

import pytest

# The tests meet the compiled kernels in their own process: a missing package is built before its first use returns
# (apot_utils.fast.aot.build_mode), not in the background while eager kernels compute. Notebook kernels inherit it.
os.environ.setdefault("APOT_KERNEL_BUILD", "wait")


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


OTHER_ARITHMETIC = {"AVX512": "AVX2", "AVX2": "SSE41"}    # this CPU's best vector instructions -> one step below


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """The notebooks run under another float32 arithmetic than the one their stored outputs were computed with.

    A chapter's outputs are stored from a run under the default arithmetic of the machine that executed it;
    nbval then checks them here with oneDNN limited to the vector instructions one step below this CPU's best
    (``ONEDNN_MAX_CPU_ISA``: AVX2 where it has AVX-512, SSE41 where AVX2 is its best), so that convolutions sum
    in another order. An output that follows the CPU's summation order and is not marked
    ``NBVAL_IGNORE_OUTPUT`` fails on every machine instead of only on the next kind of CPU (chapter 07's
    calibrated scale did, issue 41). Set around each notebook cell's setup only (a kernel starts there and inherits
    it); a ``ONEDNN_MAX_CPU_ISA`` given by the caller is kept (a portability run chooses its own)."""
    other = None
    if str(item.fspath).endswith(".ipynb") and "ONEDNN_MAX_CPU_ISA" not in os.environ:
        import torch

        other = OTHER_ARITHMETIC.get(torch.backends.cpu.get_cpu_capability())
    if other is not None:
        os.environ["ONEDNN_MAX_CPU_ISA"] = other
    try:
        yield                       # nbval starts a notebook's kernel in its first cell's setup: it inherits it
    finally:
        if other is not None:       # and no later test or subprocess of this run does
            del os.environ["ONEDNN_MAX_CPU_ISA"]
