"""apot_utils.kernels: a fused kernel is built once per machine, then loaded from disk by later processes
without tracing or importing the compiler."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apot_utils import kernels

DYNAMIC = ({0: "n"}, None)        # x: any length; w: fixed at its example's shape


def affine(x, w):      # the package is named by this module's source
    return x * w + 1, x.sign()


@pytest.fixture
def kernel_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "KERNEL_DIR", tmp_path)
    return tmp_path


def test_built_once_then_loaded_by_a_fresh_process(kernel_dir):
    x, w = torch.randn(1000), torch.tensor(3.0)
    assert kernels.pending(affine, (x, w), DYNAMIC)
    try:
        fused = kernels.load(affine, (x, w), DYNAMIC)
    except Exception as error:       # AOTInductor needs a C++ compiler
        pytest.skip(f"AOTInductor cannot build here: {type(error).__name__}: {error}")
    assert not kernels.pending(affine, (x, w), DYNAMIC)
    assert [p.suffix for p in kernel_dir.iterdir() if not p.name.startswith(".")] == [".pt2"]
    y = torch.tensor([-2.0, 0.0, 5.0, float("nan")])                # another length than the example's
    torch.testing.assert_close(fused(y, torch.tensor(-0.5)), affine(y, torch.tensor(-0.5)), rtol=0, atol=0, equal_nan=True)
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from apot_utils import kernels
from test_kernels import DYNAMIC, affine
kernels.KERNEL_DIR = __import__("pathlib").Path({str(kernel_dir)!r})
def no_build(*args):
    raise AssertionError("built again")
kernels._build = no_build
x = torch.arange(70000.0)
out = kernels.load(affine, (x, torch.tensor(2.0)), DYNAMIC)(x, torch.tensor(2.0))[0]   # affine's first output
assert torch.equal(out, x * 2 + 1)
print(sorted(m for m in ("torch._dynamo.convert_frame", "torch._inductor.compile_fx") if m in sys.modules))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[-2] == "[]"          # neither the tracer nor the compiler was imported


def test_package_named_by_what_its_code_depends_on(kernel_dir):
    x, w = torch.randn(10), torch.tensor(3.0)
    name = kernels.package_path(affine, (x, w), DYNAMIC)
    assert kernels.package_path(affine, (torch.randn(99), torch.tensor(-1.0)), DYNAMIC) == name   # dynamic length, values
    assert kernels.package_path(affine, (x.double(), w.double()), DYNAMIC) != name                # dtype
    assert kernels.package_path(affine, (x, torch.ones(2)), DYNAMIC) != name                      # a static shape
    assert kernels.package_path(affine, (x, w), (None, None)) != name                             # what may vary
    assert name.parent == kernel_dir


def test_a_damaged_package_is_named(kernel_dir):
    x, w = torch.randn(10), torch.tensor(3.0)
    path = kernels.package_path(affine, (x, w), DYNAMIC)
    path.write_bytes(b"not a package")
    with pytest.raises(RuntimeError, match=f"could not load the kernel package {path}.*delete it to rebuild"):
        kernels.load(affine, (x, w), DYNAMIC)
