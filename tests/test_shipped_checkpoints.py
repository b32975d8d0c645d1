"""The models this project trained and ships in checkpoints/ score what checkpoints/README.md says they were made
for, on the exact first 1,000 CIFAR-10 test images (the images never chose them: a held-out split of the
training images did)."""
import json

import pytest

from apot_utils.fakequant.evaluate import validate_cifar10
from apot_utils.fakequant.loading import load_model
from apot_utils.files import batching, data
from apot_utils.files.paths import SHIPPED_DIR

pytestmark = [pytest.mark.data, pytest.mark.slow]

# issue 26's targets: within 3 points of the released 2-bit model (90.6 %), 1.5 points of the 3-bit one (93.0 %)
TARGETS = {2: 90.6 - 3.0, 3: 93.0 - 1.5}


@pytest.mark.parametrize("bit", [3, 2])
def test_fine_tuned_models_reach_their_targets(bit, ref):
    test = data.load_npz(ref("cifar10/test_first1000_lossless.npz"))
    path = SHIPPED_DIR / f"resnet20_{bit}bit_qat.pth.tar"
    model = load_model("cifar10", "resnet20", None, path, log=lambda line: None)
    assert model.spec.bit == bit
    start = load_model("cifar10", "resnet20", None, SHIPPED_DIR / f"resnet20_{bit}bit_qat" / f"resnet20_{bit}bit_ptq.pth.tar",
                       log=lambda line: None)
    before = validate_cifar10(start, test, "cpu", log=lambda line: None).top1
    after = validate_cifar10(model, test, "cpu", log=lambda line: None).top1
    assert after >= TARGETS[bit], (before, after)
    assert after > before + 3          # the fine-tune recovered what post-training quantization lost


MOBILENET = SHIPPED_DIR / "mobilenet_v2"


def mobilenet_results() -> dict:
    return json.loads((MOBILENET / "results.json").read_text())


@pytest.mark.parametrize("name", list(mobilenet_results()))
def test_the_shipped_mobilenets_score_what_results_json_says(name, ref):
    """Each shipped CIFAR-10 MobileNetV2 (full precision, post-training and fine-tuned, APoT and uniform, 4 and 3
    bits) scores on the exact 1,000 images what checkpoints/mobilenet_v2/results.json (and the chapter, and
    checkpoints/README.md) report: equal on a CPU with the recording machine's float32 summation order, within
    two images on another."""
    test = data.load_npz(ref("cifar10/test_first1000_lossless.npz"))
    model = load_model("cifar10", "mobilenet_v2", None, MOBILENET / f"{name}.pth.tar", log=lambda line: None)
    if name != "fp":                                     # e.g. 3bit_uniform_qat
        assert (model.spec.bit, model.spec.scheme) == (int(name[0]), name.split("_")[1])
    top1 = validate_cifar10(model, test, "cpu", log=lambda line: None).top1
    assert abs(round(10 * top1) - round(10 * mobilenet_results()[name]["exact1000"])) <= 2      # images of 1,000


def test_fine_tuning_the_mobilenets_helped():
    """Read from results.json (the held-out scores as evaluate.py recorded them): each fine-tune beat its
    post-training start on the held-out images that chose its epoch, and at 3 bits by more than 3 points on both
    image sets (at 4 bits the exact-image score of the uniform one fell: chapter 09)."""
    results = mobilenet_results()
    for bit in (4, 3):
        for scheme in ("apot", "uniform"):
            ptq, qat = results[f"{bit}bit_{scheme}_ptq"], results[f"{bit}bit_{scheme}_qat"]
            assert qat["holdout5k"] > ptq["holdout5k"], (bit, scheme)
            if bit == 3:
                assert min(qat["holdout5k"] - ptq["holdout5k"], qat["exact1000"] - ptq["exact1000"]) > 3, scheme


RESNET20_FILES = ["resnet20_5bit_apot.pth.tar", "resnet20_3bit_qat.pth.tar", "resnet20_2bit_qat.pth.tar",
                  "resnet20_3bit_qat/resnet20_3bit_ptq.pth.tar"]


@pytest.mark.parametrize("name", RESNET20_FILES)
def test_the_shipped_resnets_export_and_validate_from_the_files(name, ref, tmp_path):
    """Post-training BatchNorm transfer leaves some running variances at exactly 0 (channels that never vary); the
    exported files keep them and validate: the .safetensors file with the checkpoint's predictions (its float path
    is the fake-quantized model's, bit for bit), the exact ONNX file with the integer path's."""
    import torch

    from apot_utils.commands.export import export_checkpoint
    from apot_utils.commands.validate import model_of
    from apot_utils.integer.layers import integer_arithmetic

    test = data.load_npz(ref("cifar10/test_first1000_lossless.npz")).subset(300)
    silent = lambda line: None
    path = SHIPPED_DIR / name
    checkpoint = validate_cifar10(load_model("cifar10", "resnet20", None, path, log=silent), test, "cpu", log=silent)
    files = {fmt: export_checkpoint("cifar10", "resnet20", None, path, tmp_path / f"m.{fmt}", fmt, log=silent)
             for fmt in ("safetensors", "onnx")}
    exported = model_of("cifar10", "resnet20", None, files["safetensors"], log=silent)
    assert torch.equal(validate_cifar10(exported, test, "cpu", log=silent).predictions, checkpoint.predictions)
    with torch.no_grad(), integer_arithmetic(exported):
        integer = torch.cat([exported(x).argmax(1) for x, _ in batching.batches(test, 100)])
    onnx = validate_cifar10(model_of("cifar10", "resnet20", None, files["onnx"], log=silent), test, "cpu", log=silent)
    assert torch.equal(onnx.predictions, integer)
    assert int((integer != checkpoint.predictions).sum()) <= 2       # float32 against exact integer sums
