"""The same answers on every machine, tested on this one by changing its float arithmetic the way another CPU
does: with oneDNN's convolutions off PyTorch takes its own convolution, which sums in another order (and so
would a CPU with other vector instructions; ``ONEDNN_MAX_CPU_ISA=AVX2`` or ``SSE41`` has the same kind of
effect where the CPU has more). Under each variant, in a fresh process:

- the float path's predictions equal those of the release's arithmetic (``reference_formulation``) computed
  under the same variant: the project follows the release on whatever arithmetic it runs on;
- the integer path's logits (exact integer convolutions, every later rounding in one fixed order) are the
  same bits under every variant, and so are its predictions."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = r"""
import hashlib, json, sys, tempfile
import torch
torch.backends.mkldnn.enabled = sys.argv[1] != "onednn-off"    # explicit: a run may have turned it off for all
from apot_utils.files import batching, data
from apot_utils.commands.export import export_checkpoint
from apot_utils.integer.format import load_exported
from apot_utils.integer.layers import integer_arithmetic
from apot_utils.fakequant.loading import load_model
from apot_utils.fakequant.evaluate import validate_cifar10
from apot_utils.core.reference import reference_formulation

test = data.load_npz(sys.argv[2])
out, silent = {}, (lambda line: None)
for bit in (3, 2):
    model = load_model("cifar10", "resnet20", bit, "release", log=silent)
    fast = validate_cifar10(model, test, "cpu", log=silent).predictions
    with torch.no_grad():
        float_logits = torch.cat([model(x) for x, _ in batching.batches(test, 100)])
    with reference_formulation():
        release = validate_cifar10(model, test, "cpu", log=silent).predictions
    path = export_checkpoint("cifar10", "resnet20", bit, "release", f"{tempfile.mkdtemp()}/r{bit}.safetensors", log=silent)
    exported = load_exported(path)
    with torch.no_grad(), integer_arithmetic(exported):
        logits = torch.cat([exported(x) for x, _ in batching.batches(test, 100)])
    out[bit] = {"float": fast.tolist(), "release": release.tolist(), "integer": logits.argmax(1).tolist(),
                "integer_logits_sha256": hashlib.sha256(logits.numpy().tobytes()).hexdigest(),
                "float_logits_sha256": hashlib.sha256(float_logits.numpy().tobytes()).hexdigest()}
print(json.dumps(out))
"""

VARIANTS = ("default", "onednn-off")


def run_variants(images, script: str = SCRIPT) -> dict[str, dict]:
    """``script`` under every variant, each in its own process, all at once, one thread each (2 cores: side by
    side, not in turn); the JSON each prints last."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    runs = {name: subprocess.Popen([sys.executable, "-c", script, name, str(images)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env) for name in VARIANTS}
    results = {}
    for name, run in runs.items():
        stdout, stderr = run.communicate()
        assert run.returncode == 0, stderr[-3000:]
        results[name] = json.loads(stdout.splitlines()[-1])
    return results


def test_float_path_follows_the_release_and_integer_path_is_the_same_everywhere(ref):
    images = ref("cifar10/test_first1000_lossless.npz")
    results = run_variants(images)
    for name, per_bit in results.items():
        for bit, r in per_bit.items():
            differ = [i for i, (a, b) in enumerate(zip(r["float"], r["release"])) if a != b]
            assert differ == [], f"{name}, {bit} bits: images {differ} differ from the release's arithmetic"
            assert len(r["float"]) == len(r["integer"]) == 1000
    first, *others = results.values()
    for other in others:
        for bit in first:
            assert other[bit]["integer_logits_sha256"] == first[bit]["integer_logits_sha256"], bit
            assert other[bit]["integer"] == first[bit]["integer"], bit
    # the variants do change the float arithmetic (otherwise this test would show nothing)
    for bit in first:
        assert results["default"][bit]["float_logits_sha256"] != results["onednn-off"][bit]["float_logits_sha256"], bit


CALIBRATION = r"""
import hashlib, json, sys
import torch
torch.backends.mkldnn.enabled = sys.argv[1] != "onednn-off"
from apot_utils.files import data
from apot_utils.fakequant.loading import load_model
from apot_utils.fakequant.ptq import post_training_quantize
from apot_utils.fakequant.spec import ModelSpec

images = data.normalize(data.load_npz(sys.argv[2]).sample(64, seed=0).x)
full_precision = load_model("cifar10", "resnet20", 32, "release", log=lambda line: None)
model = post_training_quantize(full_precision, ModelSpec("cifar10", "resnet20", 5, per_channel=True), images,
                               log=lambda line: None)
state = model.state_dict()
print(json.dumps({"alpha": {k: v.flatten().tolist() for k, v in state.items() if k.endswith("alpha")},
                  "batchnorm": {k: v.tolist() for k, v in state.items() if k.endswith(("running_mean", "running_var"))}}))
"""


def test_post_training_calibration_is_the_same_under_two_arithmetics(ref):
    """The same calibration images give the same α under another float32 summation order (chapter 07's 5-bit
    per-channel model: in float32 the calibration moved a layer's α by 9 % between AVX-512 and AVX2), and
    BatchNorm's transferred statistics agree to float32 rounding."""
    images = ref("cifar10/test_first1000_lossless.npz")     # any images: the test compares two runs on them
    results = run_variants(images, CALIBRATION)
    first, other = results["default"], results["onednn-off"]
    for key, values in first["alpha"].items():
        assert other["alpha"][key] == pytest.approx(values, rel=1e-6), key
    for key, values in first["batchnorm"].items():
        assert other["batchnorm"][key] == pytest.approx(values, rel=1e-5, abs=1e-6), key
