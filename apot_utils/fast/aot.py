"""Fused kernels compiled ahead of time by AOTInductor, kept on disk and loaded in milliseconds.

``torch.compile`` traces and compiles in every process: importing its compiler and tracing took seconds
before the first batch (``benchmarks/results/README.md``). Here a kernel, a function of tensors, is
exported once per machine with ``torch.export``, compiled by AOTInductor into a shared library packaged
as a ``.pt2`` file under :func:`~apot_utils.files.paths.kernel_dir` (written atomically), and every later process only loads that
library: no compiler, no tracing, no import of the compiler's Python side.

A package's name covers everything its code depends on: the kernel's own source and that of the functions
of its module it calls (:func:`kernel_source`; nothing else, so editing a docstring or the code around a
kernel never rebuilds it), its argument dtypes
and static shapes (dimensions not listed as dynamic are compiled in), the device, the torch version and
the CPU's instruction-set flags (AOTInductor compiles with ``-march=native``).
"""
from __future__ import annotations

import atexit
import hashlib
import importlib
import inspect
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from ..files.paths import kernel_dir, process_alive



@lru_cache(maxsize=None)
def _machine(device_type: str) -> str:
    """What the compiled code may depend on besides its source: torch, and the CPU or GPU it was built for."""
    parts = [torch.__version__, platform.machine(), device_type]
    if device_type == "cuda":
        parts += [torch.cuda.get_device_name(), str(torch.cuda.get_device_capability())]
    try:
        with open("/proc/cpuinfo") as f:
            parts.append(next((line for line in f if line.startswith("flags")), ""))
    except OSError:
        parts.append(platform.processor())
    return "|".join(parts)


def kernel_source(fn: Callable) -> str:
    """The source of ``fn`` and of every function of its module that it calls, directly or not (nested
    functions included), in the order first met."""
    seen, order = set(), []

    def names(code) -> set[str]:
        found = set(code.co_names)
        for const in code.co_consts:
            if inspect.iscode(const):
                found |= names(const)
        return found

    def visit(f):
        if f in seen:
            return
        seen.add(f)
        order.append(inspect.getsource(f))
        for name in sorted(names(f.__code__)):
            called = f.__globals__.get(name)
            if inspect.isfunction(called) and called.__module__ == f.__module__:
                visit(called)

    visit(fn)
    return "\n".join(order)


def package_path(fn: Callable, args: tuple[torch.Tensor, ...], dynamic: tuple[dict[int, str] | None, ...]) -> Path:
    """Where the package of ``fn`` for arguments like ``args`` lives (see :func:`load`)."""
    static = [(str(a.dtype), [None if d and i in d else n for i, n in enumerate(a.shape)], d) for a, d in zip(args, dynamic)]
    source = kernel_source(fn)
    digest = hashlib.sha256(repr((fn.__qualname__, source, static, _machine(args[0].device.type))).encode())
    return kernel_dir() / f"{fn.__name__.strip('_')}-{args[0].device.type}-{digest.hexdigest()[:16]}.pt2"


class _Call(torch.nn.Module):      # torch.export takes modules
    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _build(fn: Callable, args: tuple[torch.Tensor, ...], dynamic: tuple[dict[int, str] | None, ...], path: Path) -> None:
    import torch._inductor
    from torch.export import Dim, export

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)    # "no CUDA runtime" on CPUs
    dims: dict[str, Dim] = {}
    shapes = tuple(None if d is None else {i: dims.setdefault(name, Dim(name, min=2)) for i, name in d.items()}
                   for d in dynamic)
    program = export(_Call(fn), args, dynamic_shapes=(shapes,))      # forward(*args): one input, a tuple
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".building-") as scratch:
        built = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(scratch, path.name))
        os.chmod(built, 0o644)                  # whatever the umask: only this user writes it (check_writers)
        os.replace(built, path)


def remove_stale_builds() -> list[Path]:
    """Delete the scratch folders (``.building-*``) of builds that were killed; returns them. Call it only
    while holding the build lock: a build runs only under that lock, so none of them is in use."""
    stale = sorted(kernel_dir().glob(".building-*"))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


@lru_cache(maxsize=None)
def loader_scratch() -> Path:
    """This process's folder for the packages the loader unpacks, ``apot-kernels.<host>.<pid>`` in the temporary
    folder, removed at exit. The loader unpacks each package into a temporary folder of its own and deletes it at
    exit, but not when the load fails or the process is killed; the folders of this machine's processes that no
    longer run are deleted here, the first time a process loads a kernel."""
    base, host = Path(tempfile.gettempdir()), socket.gethostname()
    for folder in base.glob(f"apot-kernels.{host}.*"):
        pid = folder.name.rpartition(".")[2]
        if pid.isdigit() and not process_alive(int(pid)) and folder.stat().st_uid == os.getuid():
            shutil.rmtree(folder, ignore_errors=True)
    mine = base / f"apot-kernels.{host}.{os.getpid()}"
    mine.mkdir(mode=0o700, exist_ok=True)
    atexit.register(shutil.rmtree, mine, True)
    return mine


LOCK_TIMEOUT_S = 600.0      # a build takes about 15 s; a lock held this long is a stopped or hung build


class UntrustedKernel(RuntimeError):
    """A kernel package (or its folder) that another user could have written: loading it would run their code."""


def check_writers(path: Path) -> None:
    """Refuse ``path`` (the kernel folder or a package) unless this user owns it (a package is a shared library:
    loading it runs its code, so one planted by another user in a shared folder, ``APOT_KERNEL_DIR=/tmp/...``,
    must not be loaded), or if anyone may write it. A folder of this user's that group or others may write, or a
    package its group may write (made under umask 002, or by an earlier version), loses those write bits."""
    info = path.stat()
    if info.st_uid != os.getuid():
        raise UntrustedKernel(f"{path} is owned by user {info.st_uid}: a kernel package there could be anyone's "
                              "code, so it is not loaded; point APOT_KERNEL_DIR at a folder of your own")
    if path.is_file() and info.st_mode & 0o002:
        raise UntrustedKernel(f"{path} is writable by anyone: it could hold anyone's code, so it is not loaded; "
                              "delete it to rebuild it")
    if info.st_mode & 0o022:
        path.chmod(info.st_mode & ~0o022 & 0o7777)


class build_lock:
    """The kernel folder's build lock (``fcntl.flock`` on ``.lock``, released when its holder ends, however it
    ends). While another process holds it, say so once on stderr and wait; after :data:`LOCK_TIMEOUT_S`
    (``APOT_KERNEL_LOCK_TIMEOUT`` seconds) give up with a TimeoutError: the caller computes eagerly instead."""

    def __enter__(self):
        timeout = float(os.environ.get("APOT_KERNEL_LOCK_TIMEOUT", LOCK_TIMEOUT_S))
        self.file = open(kernel_dir() / ".lock", "w")
        try:
            return self._wait(timeout)
        except BaseException:
            self.file.close()
            raise

    def _wait(self, timeout: float):
        import fcntl
        import sys
        import time

        start, said = time.monotonic(), False
        while True:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() - start >= timeout:
                    raise TimeoutError(f"another process has held the kernel build lock {kernel_dir() / '.lock'} for "
                                       f"{timeout:.0f} s (a stopped or hung build?)") from None
                if not said:
                    print(f"=> waiting for another process's kernel build ({kernel_dir() / '.lock'}; at most "
                          f"{timeout:.0f} s, then the eager kernels)", file=sys.stderr, flush=True)
                    said = True
                time.sleep(0.2)

    def __exit__(self, *exc):
        self.file.close()          # closing releases the lock


def pending(fn: Callable, args: tuple[torch.Tensor, ...], dynamic: tuple[dict[int, str] | None, ...]) -> bool:
    """Whether :func:`load` would first have to build this package (a one-off wait on this machine)."""
    return not package_path(fn, args, dynamic).exists()


def build(fn: Callable, args: tuple[torch.Tensor, ...], dynamic: tuple[dict[int, str] | None, ...]) -> Path:
    """Build the package of ``fn`` for tensors like ``args`` unless it exists (under :class:`build_lock`, in a
    folder of this user's that no one else may write); returns its path."""
    path = package_path(fn, args, dynamic)
    if not path.exists():
        if not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o755)            # whatever the umask: only this user writes it
        check_writers(path.parent)
        with build_lock():
            remove_stale_builds()
            if not path.exists():
                _build(fn, args, dynamic, path)
    return path


BUILD_MODES = ("exit", "wait")


def build_mode() -> str:
    """``APOT_KERNEL_BUILD`` (read at each call): 'exit' (the default) leaves a missing CPU package to another
    process started when this one ends (:func:`build_at_exit`), so that this process computes eagerly (the same
    values) and a later one loads the package; 'wait' builds it before the first use returns (the tests do, so that
    they meet the compiled kernels in their own process; so does the ``train`` command, whose run outlasts a
    build many times over). Building in another process while this one computes was measured slower on a 2-core
    CPU than either (``benchmarks/results/README.md``)."""
    mode = os.environ.get("APOT_KERNEL_BUILD", "exit")
    if mode not in BUILD_MODES:
        raise ValueError(f"APOT_KERNEL_BUILD must be one of {BUILD_MODES}, got {mode!r}")
    return mode


def defers_build(device_type: str) -> bool:
    """Whether a missing package for ``device_type`` is left to a build when this process ends (CPU packages under
    :func:`build_mode` 'exit'), the process computing eagerly meanwhile."""
    return device_type == "cpu" and build_mode() == "exit"


def failure_marker(path: Path) -> Path:
    """Where a :class:`BackgroundBuild` of the package ``path`` that failed leaves its error (delete it to try
    again)."""
    return path.with_name(path.name + ".failed")


class BackgroundBuild:
    """The build of one package in another process (``python -m apot_utils.fast.aot``), started by
    :meth:`start`; it outlives its caller if need be. Its output goes to ``<package>.log`` beside the package; a
    failure also writes :func:`failure_marker`, so that later processes do not try again."""

    def __init__(self, path: Path, process: subprocess.Popen):
        self.path, self.process = path, process

    @classmethod
    def start(cls, fn: Callable, args: tuple[torch.Tensor, ...], dynamic: tuple[dict[int, str] | None, ...]
              ) -> BackgroundBuild:
        path = package_path(fn, args, dynamic)
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writers(path.parent)
        request = path.with_name(f".request-{path.stem}-{os.getpid()}.pt")
        torch.save({"module": fn.__module__, "name": fn.__qualname__, "args": tuple(args), "dynamic": dynamic},
                   request)
        with open(path.with_name(path.name + ".log"), "w") as log:
            process = subprocess.Popen([sys.executable, "-m", "apot_utils.fast.aot", str(request)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)   # a Ctrl-C of the caller does not stop it
        os.setpriority(os.PRIO_PROCESS, process.pid, 19)                # the lowest: the caller's work comes first
        return cls(path, process)


_at_exit: dict[Path, tuple] = {}      # package path -> (fn, args, dynamic): built when this process ends


def build_at_exit(fn: Callable, args: tuple[torch.Tensor, ...], dynamic: tuple[dict[int, str] | None, ...]) -> Path:
    """Have the package of ``fn`` for tensors like ``args`` built by a :class:`BackgroundBuild` started when this
    process exits (once, however often it is asked); returns the package's path."""
    path = package_path(fn, args, dynamic)
    if not _at_exit:
        atexit.register(_start_requested_builds)
    _at_exit.setdefault(path, (fn, tuple(a.detach().cpu() for a in args), dynamic))
    return path


def _start_requested_builds() -> None:
    for path, (fn, args, dynamic) in _at_exit.items():
        if not path.exists():
            try:
                BackgroundBuild.start(fn, args, dynamic)
            except OSError:         # a folder that cannot be written: the next process computes eagerly too
                pass


def _build_requested(request: Path) -> None:
    """A background build's work (:class:`BackgroundBuild`): the package the request file describes; on failure the
    error is written to :func:`failure_marker` and raised."""
    spec = torch.load(request, weights_only=True)
    request.unlink()
    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    try:
        build(fn, spec["args"], spec["dynamic"])
    except Exception as error:
        failure_marker(package_path(fn, spec["args"], spec["dynamic"])).write_text(
            f"{type(error).__name__}: {error}\n")
        raise


def load(fn: Callable, args: tuple[torch.Tensor, ...], dynamic: tuple[dict[int, str] | None, ...]) -> Callable:
    """``fn`` compiled for tensors like ``args``: a callable that takes tensors of any layout (views and
    non-contiguous tensors are made contiguous first) and returns what ``fn`` returns, a tensor or a tuple
    of two or more.

    dynamic: for each argument, the dimensions that may vary from call to call, by name (dimensions with the
    same name are equal in every call), or None; every other dimension is fixed at its size in ``args``.
    The package is built here if it is missing (:func:`build`: about 15 s on 2 CPU cores; a lock keeps concurrent
    processes from building it twice, :class:`build_lock`) and loaded from disk, only from a folder and a file of
    this user's that no one else may write (:func:`check_writers`).
    """
    path = build(fn, args, dynamic)
    check_writers(path.parent)
    check_writers(path)
    device = args[0].device
    index = -1 if device.type == "cpu" else (device.index if device.index is not None else torch.cuda.current_device())
    scratch = loader_scratch()
    before = set(scratch.iterdir())
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(scratch)    # where the loader unpacks the package (std::filesystem's temp folder)
    try:   # the loader behind torch._inductor.package.load_package, without that module's imports (0.9 s)
        runner = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, index)
    except RuntimeError as error:
        for left in set(scratch.iterdir()) - before:        # what the failed load unpacked (about 1.6 MB)
            shutil.rmtree(left, ignore_errors=True)
        raise RuntimeError(f"could not load the kernel package {path} ({error}); delete it to rebuild it") from None
    finally:
        if saved is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved

    def call(*tensors):
        # The compiled code reads each argument as dense row-major memory (the layout it was exported
        # with): an expanded, sliced, transposed or channels-last view is copied to that layout first.
        out = runner.run([t.contiguous() for t in tensors])
        return out[0] if len(out) == 1 else tuple(out)
    return call


if __name__ == "__main__":
    _build_requested(Path(sys.argv[1]))
