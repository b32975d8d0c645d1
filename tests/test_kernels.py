"""apot_utils.fast.aot: a fused kernel is built once per machine, then loaded from disk by later processes
without tracing or importing the compiler."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apot_utils.fast import aot

DYNAMIC = ({0: "n"}, None)        # x: any length; w: fixed at its example's shape


def affine(x, w):      # the package is named by this function's source
    return x * w + 1, x.sign()


@pytest.fixture
def kernel_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("APOT_KERNEL_DIR", str(tmp_path))
    return tmp_path


def test_built_once_then_loaded_by_a_fresh_process(kernel_dir):
    x, w = torch.randn(1000), torch.tensor(3.0)
    assert aot.pending(affine, (x, w), DYNAMIC)
    try:
        fused = aot.load(affine, (x, w), DYNAMIC)
    except Exception as error:       # AOTInductor needs a C++ compiler
        pytest.skip(f"AOTInductor cannot build here: {type(error).__name__}: {error}")
    assert not aot.pending(affine, (x, w), DYNAMIC)
    assert [p.suffix for p in kernel_dir.iterdir() if not p.name.startswith(".")] == [".pt2"]
    y = torch.tensor([-2.0, 0.0, 5.0, float("nan")])                # another length than the example's
    torch.testing.assert_close(fused(y, torch.tensor(-0.5)), affine(y, torch.tensor(-0.5)), rtol=0, atol=0, equal_nan=True)
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_kernels import DYNAMIC, affine
from apot_utils.fast import aot
def no_build(*args):
    raise AssertionError("built again")
aot._build = no_build
x = torch.arange(70000.0)
out = aot.load(affine, (x, torch.tensor(2.0)), DYNAMIC)(x, torch.tensor(2.0))[0]   # affine's first output
assert torch.equal(out, x * 2 + 1)
print(sorted(m for m in ("torch._dynamo.convert_frame", "torch._inductor.compile_fx") if m in sys.modules))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[-2] == "[]"          # neither the tracer nor the compiler was imported


def test_package_named_by_what_its_code_depends_on(kernel_dir):
    x, w = torch.randn(10), torch.tensor(3.0)
    name = aot.package_path(affine, (x, w), DYNAMIC)
    assert aot.package_path(affine, (torch.randn(99), torch.tensor(-1.0)), DYNAMIC) == name   # dynamic length, values
    assert aot.package_path(affine, (x.double(), w.double()), DYNAMIC) != name                # dtype
    assert aot.package_path(affine, (x, torch.ones(2)), DYNAMIC) != name                      # a static shape
    assert aot.package_path(affine, (x, w), (None, None)) != name                             # what may vary
    assert name.parent == kernel_dir


def test_a_damaged_package_is_named(kernel_dir):
    x, w = torch.randn(10), torch.tensor(3.0)
    path = aot.package_path(affine, (x, w), DYNAMIC)
    path.write_bytes(b"not a package")
    with pytest.raises(RuntimeError, match=f"could not load the kernel package {path}.*delete it to rebuild"):
        aot.load(affine, (x, w), DYNAMIC)


KERNEL_MODULE = """
import torch


def helper(x):
    return x * 2{helper_change}


def kernel(x):
    return helper(x) + 1


def unrelated(x):
    \"\"\"{docstring}\"\"\"
    return x
"""


def _package_of(tmp_path, name, **text):
    import importlib.util

    path = tmp_path / f"{name}.py"
    path.write_text(KERNEL_MODULE.format(**{"helper_change": "", "docstring": "one", **text}))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return aot.package_path(module.kernel, (torch.randn(4),), ({0: "n"},)).name


def test_package_named_by_the_kernels_own_code_alone(tmp_path):
    """Editing anything but the kernel and the functions it calls (a docstring elsewhere in its module, the
    quantizer, the layers) keeps its package; editing a function it calls does not."""
    first = _package_of(tmp_path, "kernels_a")
    assert _package_of(tmp_path, "kernels_b", docstring="another docstring, and more code below") == first
    assert _package_of(tmp_path, "kernels_c", helper_change=" + 0") != first


def test_the_projection_kernels_hash_only_their_own_module():
    """The package's kernels live alone in apot_utils/fast/kernels.py, which imports nothing of the package:
    the autograd functions, quantizers and layers that call them are elsewhere."""
    import ast

    from apot_utils.fast import kernels

    tree = ast.parse(Path(kernels.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "." for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module != "__future__"}
    assert imported == {"torch"}
    for name, (fn, _) in kernels.KERNELS.items():
        assert fn.__module__ == kernels.__name__, name
