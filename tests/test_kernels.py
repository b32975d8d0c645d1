"""apot_utils.fast.aot: a fused kernel is built once per machine, then loaded from disk by later processes
without tracing or importing the compiler."""
import os
import subprocess
import sys
import time
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


def fails_to_export(x):      # a background build of this fails: its error is kept for later processes
    raise RuntimeError("cannot trace this")


def test_a_first_use_computes_eagerly_and_the_kernel_is_built_when_the_process_ends(kernel_dir, monkeypatch):
    """On a machine without the package, a process's projections use the eager kernel (its first use does not wait
    for a build); when it ends, another process builds the package, which the next process loads instead of
    building it. (Builds a real package, ~15 s.)"""
    from apot_utils.core.levels import level_set
    from apot_utils.fast import projection

    script = """
import torch
from apot_utils.core.levels import level_set
from apot_utils.fast import aot, projection
x = torch.rand(1 << 17) * 1.2 - 0.1
y = projection.project(x, level_set(3))
assert list(projection._checked.values()) == [None]            # eager in this process
assert len(aot._at_exit) == 1 and not any(p.exists() for p in aot._at_exit)
torch.save((x, y), {out!r})
""".format(out=str(kernel_dir / "first.pt"))
    env = {**os.environ, "APOT_KERNEL_BUILD": "exit", "APOT_KERNEL_DIR": str(kernel_dir)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    deadline = time.monotonic() + 600
    while not list(kernel_dir.glob("*.pt2")) and not list(kernel_dir.glob("*.failed")):
        assert time.monotonic() < deadline, "no package 600 s after the process ended"
        time.sleep(0.5)
    (package,) = kernel_dir.glob("*.pt2")
    assert "RuntimeError" not in package.with_name(package.name + ".log").read_text()
    x, first = torch.load(kernel_dir / "first.pt", weights_only=True)
    monkeypatch.setattr(projection, "_checked", {})
    monkeypatch.setattr(aot, "_build", _no_build)           # the next process loads it: no build
    fused = projection.project(x, level_set(3))
    (kernel,) = projection._checked.values()
    assert callable(kernel) and torch.equal(first, fused)


def _no_build(*args):
    raise AssertionError("built again")


def test_a_failed_background_build_is_kept_and_named(kernel_dir, monkeypatch):
    """A build that fails writes why beside the package; no later process tries again (until the marker is
    deleted): the projection warns with the reason and computes eagerly."""
    from apot_utils.core.levels import level_set
    from apot_utils.fast import projection

    monkeypatch.setenv("PYTHONPATH", f"{Path(__file__).parent}:{Path(__file__).parent.parent}")
    x = torch.randn(8)
    build = aot.BackgroundBuild.start(fails_to_export, (x,), ({0: "n"},))
    assert build.process.wait(timeout=300) != 0
    marker = aot.failure_marker(build.path)
    assert "RuntimeError: cannot trace this" in marker.read_text()
    assert "cannot trace this" in build.path.with_name(build.path.name + ".log").read_text()
    assert not build.path.exists() and not list(kernel_dir.glob(".request-*"))

    monkeypatch.setenv("APOT_KERNEL_BUILD", "exit")
    monkeypatch.setattr(projection, "_checked", {})
    levels, big = level_set(3), torch.rand(1 << 17)
    d = projection.decisions(projection._checked_levels(levels, big.dtype), big.dtype, big.device)
    name, tables = projection._kernel_for("project", d)
    path = aot.package_path(projection.KERNELS[name][0], (big, *tables, d.levels), projection.KERNELS[name][1])
    aot.failure_marker(path).write_text("RuntimeError: no compiler\n")
    with pytest.warns(UserWarning, match="its build failed on this machine: RuntimeError: no compiler"):
        y = projection.project(big, levels)
    assert not aot._at_exit or path not in aot._at_exit           # no build asked for
    monkeypatch.setenv("APOT_COMPILE", "0")
    assert torch.equal(y, projection.project(big, levels))


def test_the_build_mode_is_checked(monkeypatch):
    monkeypatch.setenv("APOT_KERNEL_BUILD", "later")
    with pytest.raises(ValueError, match="APOT_KERNEL_BUILD must be one of"):
        aot.build_mode()
