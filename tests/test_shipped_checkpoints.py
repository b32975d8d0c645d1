"""The models this project trained and ships in checkpoints/ score what checkpoints/README.md says they were made
for, on the exact first 1,000 CIFAR-10 test images (the images never chose them: a held-out split of the
training images did)."""
import pytest

from apot_utils.fakequant.evaluate import validate_cifar10
from apot_utils.fakequant.loading import load_model
from apot_utils.files import data
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
