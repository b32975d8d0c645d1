"""Validations of the released models: half of the JPEG copy of the test set, the exact first 1,000 images,
the command line."""
import platform
import subprocess
import sys

import pytest

from apot_utils.files import batching, data
from apot_utils.core.levels import level_set
from apot_utils.fakequant.loading import load_model
from apot_utils.fakequant.evaluate import validate_cifar10
from apot_utils.fast.projection import build_pending

pytestmark = pytest.mark.slow


def test_cli_validate_first_batch(ref):
    path = ref("cifar10/test_first100_lossless.npz")
    pending = build_pending(level_set(3))        # whether this machine has yet to build the 3-bit kernel
    out = subprocess.run([sys.executable, "-m", "apot_utils", "validate", "--bit", "3", "--data", str(path),
                          "--device", "cpu"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("=> running on the CPU")
    assert lines[1:3] == ["=> Building model...", "=> loading the 3-bit quantized model from checkpoint"]
    assert sum(line.startswith("weight alpha: ") for line in lines) == 20
    assert "=> loading cifar10 data..." in lines
    builds = [line for line in lines if "first batch also builds the fused projection kernel" in line]
    assert len(builds) == (1 if pending else 0)                   # the one-off wait is announced
    # The release's README printed Prec 96.000% for this batch (a GPU); here, what this machine computes in
    # process, within one image of that (see AUTHORS_FIRST1000 on why not exactly).
    model = load_model("cifar10", "resnet20", 3, "release", log=lambda line: None)
    here = validate_cifar10(model, data.load_npz(path), "cpu", log=lambda line: None).top1
    assert lines[-1] == f" * Prec {here:.3f}% " and abs(here - 96.0) <= 1.0
    assert sum(line.startswith(" * Prec") for line in lines) == 1


def test_cli_validate_on_a_new_machine_computes_eagerly_and_says_so(ref, tmp_path):
    """Without the kernel package (an empty kernel folder) and the default build mode, validate does not wait for a
    build: it says so, prints the accuracy the built kernel gives, and the package appears once it has ended."""
    import os
    import time

    path = ref("cifar10/test_first100_lossless.npz")
    argv = [sys.executable, "-m", "apot_utils", "validate", "--bit", "3", "--data", str(path), "--device", "cpu"]
    kernels = tmp_path / "kernels"
    fresh = subprocess.run(argv, capture_output=True, text=True, check=True,
                           env={**os.environ, "APOT_KERNEL_DIR": str(kernels), "APOT_KERNEL_BUILD": "exit"}).stdout
    built = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert sum("this run uses the eager projection kernel" in line for line in fresh.splitlines()) == 1
    assert fresh.splitlines()[-1] == built.splitlines()[-1]                       # the same * Prec line
    deadline = time.monotonic() + 600               # every build the command left (one log each) ends in its package
    while not (list(kernels.glob("*.pt2.log")) and all(log.with_suffix("").exists() for log in kernels.glob("*.pt2.log"))):
        assert not list(kernels.glob("*.failed")) and time.monotonic() < deadline, "no package after the command"
        time.sleep(0.5)


def test_cli_errors_are_clear(tmp_path):
    run = subprocess.run([sys.executable, "-m", "apot_utils", "validate", "--bit", "5", "--data", str(tmp_path / "x.npz")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "released no resnet20 5-bit" in run.stderr
    run = subprocess.run([sys.executable, "-m", "apot_utils", "validate", "--bit", "7", "--arch", "resnet18"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "--arch for cifar10 must be one of" in run.stderr


def test_outputs_bit_identical_to_unoptimized_path(ref):
    """Table projection + frozen eval weights give the very logits of argmin + per-forward quantization."""
    import torch

    from apot_utils.fakequant import layers
    from apot_utils.core.reference import reference_formulation

    model = load_model("cifar10", "resnet20", 3, ref("checkpoints/cifar10/res20_3bit.pth.tar"))
    images, _ = next(batching.batches(data.load_npz(ref("cifar10/test_first100_lossless.npz")), 100))
    model.eval()
    with layers.frozen_weights(model), torch.inference_mode():
        fast = model(images)
    with reference_formulation(), torch.inference_mode():
        slow = model(images)
    assert torch.equal(fast, slow)


# The authors' own code on the exact first 1,000 test images, on an AVX-512 CPU (data README).
AUTHORS_FIRST1000 = {32: 94.2, 4: 92.6, 3: 93.0, 2: 90.6}
# Float32 convolutions sum in an order that depends on the CPU's instruction set (oneDNN picks other
# kernels), and a quantized network moves an activation to the next level wherever it sits within rounding
# of a midpoint: the authors' code itself scores 92.9 % at 3 bits on an AVX2-only CPU (image 925 changes
# prediction), and 92.5 / 92.9 / 90.4 % at 4/3/2 bits with oneDNN's convolutions off. So an accuracy is
# compared with theirs within a few images; image for image, the comparison is with the release's arithmetic
# run here, in this process, on this machine.
TOLERANCE_IMAGES = 3


@pytest.mark.parametrize("bit", [32, 4, 3, 2])
def test_released_models_on_the_exact_first_1000_images(ref, bit):
    from apot_utils.core.reference import reference_formulation

    first1000 = data.load_npz(ref("cifar10/test_first1000_lossless.npz"))
    model = load_model("cifar10", "resnet20", bit, ref(f"checkpoints/cifar10/res20_{bit}bit.pth.tar"), log=lambda line: None)
    ours = validate_cifar10(model, first1000, "cpu", log=lambda line: None)
    with reference_formulation():
        release = validate_cifar10(model, first1000, "cpu", log=lambda line: None)
    differ = (ours.predictions != release.predictions).nonzero().flatten().tolist()
    assert differ == [], f"images {differ} are predicted otherwise than the release's arithmetic on this machine"
    assert len(ours.predictions) == 1000
    assert abs(ours.top1 - AUTHORS_FIRST1000[bit]) <= TOLERANCE_IMAGES / 10, (ours.top1, AUTHORS_FIRST1000[bit])


RETAIN_SCRIPT = """
import ctypes, ctypes.util, sys, torch
from apot_utils.fakequant.evaluate import reuse_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
before = libc.mallinfo2().hblkhd          # bytes in blocks mapped apart from the heap (given back on free)
x = torch.empty(1 << 21)                  # an 8 MB tensor, the size of a CIFAR-10 batch's activations
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")
def test_the_command_lines_allocator_setting_keeps_tensors_in_the_reused_heap():
    mapped = {}
    for mode in ("default", "reuse"):
        run = subprocess.run([sys.executable, "-c", RETAIN_SCRIPT, mode], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        mapped[mode] = int(run.stdout.split()[-1])
    assert mapped["default"] >= 8 << 20 and mapped["reuse"] == 0, mapped


def test_validate_progress_bar_leaves_the_release_log_as_it_is(ref, capsys):
    """--progress draws a bar on stderr; stdout, the release's log, is the same with and without it."""
    from apot_utils.cli import main

    images = str(ref("cifar10/test_first100_lossless.npz"))
    args = ["validate", "--bit", "3", "--data", images]
    assert main(args + ["--no-progress"]) == 0
    plain = capsys.readouterr()
    assert main(args + ["--progress"]) == 0
    barred = capsys.readouterr()
    strip = lambda text: [line.split("\tTime")[0] + line.split(")", 2)[-1] if "\tTime" in line else line
                          for line in text.splitlines()]
    assert strip(barred.out) == strip(plain.out)
    assert "validate" in barred.err and "batch" in barred.err and "validate:" not in plain.err


def test_the_api_and_the_command_line_default_to_the_same_bitwidth(ref, capsys):
    """validate without --bit on the release validates RELEASE_BIT, and so does run_validation without bit."""
    from apot_utils.cli import main
    from apot_utils.commands.validate import RELEASE_BIT, run_validation

    images = str(ref("cifar10/test_first100_lossless.npz"))
    lines = []
    run_validation(data_source=images, limit=10, log=lines.append)
    assert main(["validate", "--data", images, "--limit", "10", "--no-progress"]) == 0
    wanted = f"=> loading the {RELEASE_BIT}-bit quantized model from checkpoint"
    assert wanted in lines and wanted in capsys.readouterr().out
