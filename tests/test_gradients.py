"""The quantizer's backward keeps less (for activations one coded slope, for weights a slope and a mask,
instead of u and q) and runs fused: its gradients must be bit for bit those of the formulation that kept
u and q with the argmin projection, reference_formulation()."""
import pytest
import torch

from apot_utils.files import batching, data
from apot_utils.core.reference import reference_formulation
from apot_utils.fakequant.loading import load_model


def _gradients(model, images, labels):
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bit, clip", [(2, False), (3, False), (4, False), (4, True)])
def test_gradients_bit_identical_to_the_formulation_that_kept_u_and_q(ref, bit, clip):
    first100 = data.load_npz(ref("cifar10/test_first100_lossless.npz"))
    images, labels = next(batching.batches(first100, 64))
    model = load_model("cifar10", "resnet20", bit, "release", log=lambda line: None).train()
    for m in model.modules():
        if hasattr(m, "clip_weight_grad"):
            m.clip_weight_grad = clip
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ours = _gradients(model, images, labels)
    model.load_state_dict(state)                                  # BatchNorm statistics moved: put them back
    with reference_formulation():
        reference = _gradients(model, images, labels)
    assert ours.keys() == reference.keys() and len(ours) > 40
    for name in ours:
        assert torch.equal(ours[name], reference[name]), name
