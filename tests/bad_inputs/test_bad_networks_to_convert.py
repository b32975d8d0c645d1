"""Networks that convert must not get wrong silently (issue 37, items 6-9): padding modes, a module registered
under two names, subclasses with their own forward, inputs made negative where the graph cannot see it, and
copies taken while the weights are frozen."""
import copy
import pickle

import pytest
import torch
from torch import nn

from apot_utils.fakequant.convert import convert, graph_signed_inputs
from apot_utils.fakequant.layers import QuantConv2d, frozen_weights


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
def test_padding_modes_are_honoured_on_every_layer(mode):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode=mode), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1, padding_mode=mode))
    q = convert(plain, 8, signed=False, first_last_bits=None, require_batchnorm=False).model
    x = torch.rand(2, 3, 9, 9)
    for new in (q[0], q[2]):
        assert new.padding_mode == mode
    # 8-bit first and last layers: the quantized weights with the original padding, exactly
    eight = convert(plain, 4, signed=False, require_batchnorm=False).model
    assert eight[4].padding_mode == mode
    y = eight[0](x)
    w = eight[0]._quantized_weight()
    zero_padded = nn.functional.conv2d(x, w, eight[0].bias, padding=1)
    padded = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode=mode), w, eight[0].bias)
    assert torch.allclose(y, padded, atol=1e-6) and not torch.allclose(y, zero_padded, atol=1e-3)
    # an inner quantized layer pads its quantized input the same way
    inner = q[2]
    u = torch.rand(2, 8, 9, 9)
    qu = inner._quantized_input(u)
    assert torch.allclose(inner(u), nn.functional.conv2d(nn.functional.pad(qu, (1, 1, 1, 1), mode=mode),
                                                         inner._quantized_weight(), inner.bias), atol=1e-5)


def test_a_module_under_two_names_is_converted_once_and_stays_shared():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.c = self.b
            self.d = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.d(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))

    conversion = convert(Twice(), 4, signed="graph", require_batchnorm=False)
    q = conversion.model
    assert isinstance(q.b, QuantConv2d) and q.b is q.c
    assert any(row["name"] == "b = c" for row in conversion.rows), conversion.table()
    q(torch.rand(1, 3, 8, 8))


def test_a_subclass_with_its_own_forward_is_refused_unless_skipped():
    class Standardized(nn.Conv2d):              # weight standardization: its own forward
        def forward(self, x):
            w = (self.weight - self.weight.mean()) / self.weight.std()
            return self._conv_forward(x, w, self.bias)

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Standardized(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match=r"2 \(Standardized\) computes its own forward"):
        convert(net, 4, signed="graph")
    q = convert(net, 4, signed="graph", skip=["2"]).model
    assert type(q[2]) is Standardized


class Shift(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if self.how == "add keyword":
            y = torch.add(y, other=-1.0)
        elif self.how == "mul keyword":
            y = torch.mul(y, other=-2.0)
        elif self.how == "in-place sub":
            y.sub_(0.5)
        elif self.how == "augmented":
            y -= 0.5
        return self.b(y)


@pytest.mark.parametrize("how", ["add keyword", "mul keyword", "in-place sub", "augmented"])
def test_the_graph_rule_calls_an_input_signed_where_an_op_can_make_it_negative(how):
    model = Shift(how)
    assert "b" in graph_signed_inputs(model)
    x = torch.randn(4, 3, 5, 5)
    assert "b" in {name for name, m in model.named_modules()} and bool((model.a(x).relu() - 2).lt(0).any())


def test_copies_made_while_weights_are_frozen_train_and_follow_their_weights():
    layer = QuantConv2d(4, 4, 3, padding=1, bit=3)
    x = torch.rand(1, 4, 6, 6)
    with frozen_weights(layer):
        copied, pickled = copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))
    for clone in (copied, pickled):
        before = clone(x).detach()
        with torch.no_grad():
            clone.weight.mul_(-1)
        assert not torch.allclose(clone(x), before)
        clone(x).sum().backward()
        assert clone.weight.grad is not None


def test_either_name_of_a_shared_module_can_be_skipped_or_signed():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.d = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
            self.c = self.b

        def forward(self, x):
            return self.d(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))

    assert type(convert(Twice(), 4, skip=["c"]).model.b) is nn.Conv2d
    assert convert(Twice(), 4, signed=["c"], require_batchnorm=False).model.c.signed
