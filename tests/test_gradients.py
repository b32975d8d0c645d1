"""The quantizer's backward keeps less (a slope and a mask instead of u and q): its gradients must be
bit for bit those of the formulation that kept u and q, written out here as the reference."""
import pytest
import torch

from apot_utils import data, quantize
from apot_utils.pipeline import load_model


class _KeepsUAndQ(torch.autograd.Function):
    """The previous formulation: saves u = x / α and q, recomputes masks and slope in the backward."""

    @staticmethod
    def forward(ctx, x, alpha, levels, signed, grad_scale, clip_grad=False):
        u = x / alpha
        if signed:
            clipped = u.clamp(-1, 1)
            q = quantize.project(clipped.abs(), levels).mul_(clipped.sign())
        else:
            q = quantize.project(u, levels)
        ctx.save_for_backward(u, q)
        ctx.signed, ctx.grad_scale, ctx.clip_grad, ctx.alpha_shape = signed, grad_scale, clip_grad, tuple(alpha.shape)
        return q * alpha

    @staticmethod
    def backward(ctx, grad_out):
        u, q = ctx.saved_tensors
        if ctx.signed:
            grad_x = grad_out * (u.abs() <= 1) if ctx.clip_grad else grad_out
            slope = torch.where(u.abs() > 1, u.sign(), q - u)
        else:
            inside = (u >= 0) & (u <= 1)
            grad_x = grad_out * inside
            slope = torch.where(inside, q - u, (u > 1).to(u.dtype))
        per_element = grad_out * slope
        grad_alpha = per_element.sum() if ctx.alpha_shape == () else per_element.sum_to_size(ctx.alpha_shape)
        return grad_x, grad_alpha.mul(ctx.grad_scale), None, None, None, None


def _gradients(model, images, labels):
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bit, clip", [(2, False), (3, False), (4, False), (4, True)])
def test_gradients_bit_identical_to_the_formulation_that_kept_u_and_q(ref, monkeypatch, bit, clip):
    first100 = data.load_npz(ref("cifar10/test_first100_lossless.npz"))
    images, labels = next(data.batches(first100, 64))
    model = load_model("cifar10", "resnet20", bit, "release", log=lambda line: None).train()
    for m in model.modules():
        if hasattr(m, "clip_weight_grad"):
            m.clip_weight_grad = clip
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ours = _gradients(model, images, labels)
    model.load_state_dict(state)                                  # BatchNorm statistics moved: put them back
    monkeypatch.setattr(quantize._ClippedProjection, "apply", _KeepsUAndQ.apply)
    reference = _gradients(model, images, labels)
    assert ours.keys() == reference.keys() and len(ours) > 40
    for name in ours:
        assert torch.equal(ours[name], reference[name]), name
