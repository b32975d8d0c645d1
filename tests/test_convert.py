"""convert(): any PyTorch CNN to APoT layers (torchvision ResNet-18 and MobileNetV2, grouped convolutions), signed
inputs chosen from data, the refusals, the release's ResNet-20 rebuilt from a plain one, calibration."""
import dataclasses
import math

import pytest
import torch
import torchvision
import torch.nn.functional as F
from torch import nn

from apot_utils.fakequant.convert import convert, graph_signed_inputs, layers_without_batchnorm, negative_inputs
from apot_utils.fakequant.layers import FirstConv8bit, LastLinear8bit, QuantConv2d, QuantLinear, frozen_weights
from apot_utils.fakequant.loading import load_model
from apot_utils.fakequant.ptq import Calibration, calibrate
from apot_utils.fakequant.spec import ModelSpec
from apot_utils.fakequant.training import default_recipe, parameter_groups, set_quantizer_options, train_one_epoch
from apot_utils.files import checkpoints as apot_checkpoints, data
from apot_utils.integer.convert import to_integer
from apot_utils.integer.costs import layer_rows


def kinds(model):
    return [type(m).__name__ for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def forward_backward(model, x):
    model.train()
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    return [p for p in model.parameters() if p.grad is None]


def test_torchvision_resnet18():
    torch.manual_seed(0)
    fp = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    q, rows = convert(fp, 4, example=x)
    found = kinds(q)
    assert found[0] == "FirstConv8bit" and found[-1] == "LastLinear8bit"
    assert found.count("QuantConv2d") == 19 and len(rows) == 21            # 16 in blocks, 3 downsamples
    assert not any(r["signed"] for r in rows)                               # every quantized input follows a ReLU
    assert torch.equal(q.layer1[0].conv1.weight, fp.layer1[0].conv1.weight)  # the original weights
    assert kinds(fp).count("Conv2d") == 20                                  # the original is unchanged
    assert forward_backward(q, x) == []


def test_torchvision_mobilenet_v2_gets_signed_and_depthwise_layers():
    torch.manual_seed(0)
    fp = torchvision.models.mobilenet_v2(num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    q, rows = convert(fp, 3, example=x)
    by_name = {r["name"]: r for r in rows}
    assert by_name["features.0.0"]["now"] == "FirstConv8bit" and by_name["classifier.1"]["now"] == "LastLinear8bit"
    depthwise = [m for m in q.modules() if isinstance(m, QuantConv2d) and m.groups == m.in_channels > 1]
    assert len(depthwise) == 17
    # a block's expansion convolution reads the previous block's linear bottleneck (no ReLU): signed;
    # its depthwise convolution reads a ReLU6: unsigned
    assert by_name["features.2.conv.0.0"]["signed"] and not by_name["features.2.conv.1.0"]["signed"]
    assert by_name["features.1.conv.0.0"]["signed"] is False                # after the stem's ReLU6
    assert sum(r["signed"] for r in rows) == 16 + 1                          # the expansions of blocks 2..17, the last 1×1
    assert forward_backward(q, x) == []


@pytest.mark.parametrize("build", [lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25),
                                   lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
                                   lambda: torchvision.models.resnet18(num_classes=10)],
                         ids=["mobilenet_v2", "mobilenet_v3_small", "resnet18"])
def test_signed_layers_from_the_graph_are_those_that_see_negative_values(build):
    """signed='graph' (no ReLU-like op in front, through pooling, sums, products with a hard sigmoid's gate)
    chooses the layers that receive negative values on random images: none more, none fewer."""
    torch.manual_seed(0)
    fp = build().eval()
    assert graph_signed_inputs(fp) == negative_inputs(fp, torch.randn(4, 3, 64, 64))
    rows = convert(fp, 4, signed="graph", require_batchnorm=False).rows    # MobileNetV3's gates have no BatchNorm
    assert {r["name"] for r in rows if r["signed"]} == graph_signed_inputs(fp) - {rows[0]["name"], rows[-1]["name"]}


def test_the_graph_rule_is_conservative_where_it_cannot_tell():
    class Shifted(nn.Module):        # relu(x) - 1 can be negative; relu(x) + 2 relu(x) cannot
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Conv2d(3 if i == 0 else 4, 4, 1) for i in range(4))

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.c(y + y * 2.0) + self.d(self.b(y + (-1.0)))

    assert graph_signed_inputs(Shifted()) == {"a", "b", "d"}

    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="torch.fx can trace"):
        convert(Dynamic(), 4, first_last_bits=None, signed="graph")


def test_mobilenet_v2_is_an_architecture_of_the_toolkit():
    """ModelSpec builds the CIFAR-10 MobileNetV2 converted (signed layers from the graph), with the full-precision
    one's parameter names plus the α, so a full-precision checkpoint initializes it."""
    fp = ModelSpec("cifar10", "mobilenet_v2", 32).build()
    q = ModelSpec("cifar10", "mobilenet_v2", 3, "uniform").build()
    assert not any(isinstance(m, QuantConv2d) for m in fp.modules())
    assert sum(m.signed for m in q.modules() if isinstance(m, QuantConv2d)) == 17
    assert q.features[2].conv[0][0].signed and q.features[2].conv[0][0].scheme == "uniform"
    assert set(q.state_dict()) - set(fp.state_dict()) == {k for k in q.state_dict() if k.endswith("alpha")}
    assert q(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert fp.features[0][0].stride == (1, 1)                              # the CIFAR stem


def test_costs_of_a_converted_mobilenet():
    """Depthwise MACs are C_in/groups · kh · kw per output; a signed input has 2^b - 1 levels (2^b - 2
    comparisons); a quantized inner Linear counts as quantized."""
    q = ModelSpec("cifar10", "mobilenet_v2", 4).build()
    rows = {r["layer"]: r for r in layer_rows(q, (3, 32, 32))}
    depthwise = rows["features.1.conv.0.0"]                 # 16 channels at 32 x 32, 3 x 3 each
    assert depthwise["MACs"] == 16 * 32 * 32 * 9 and depthwise["bits w/a"] == "4/4"
    expansion = rows["features.2.conv.0.0"]                 # signed: reads block 1's 8 output channels at 32 x 32
    assert expansion["act comparisons"] == 8 * 32 * 32 * (2**4 - 2)
    assert rows["features.1.conv.0.0"]["act comparisons"] == 16 * 32 * 32 * (2**4 - 1)
    assert rows["classifier.1"]["bits w/a"] == "8/8"
    inner = convert(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 4, 8), nn.Linear(8, 2)), 3,
                    signed=True, require_batchnorm=False).model
    assert [r["bits w/a"] for r in layer_rows(inner, (3, 2, 2))] == ["8/8", "3/3", "8/8"]


def test_grouped_convolutions_and_inner_linear_layers():
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False),
                       nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 20),
                       nn.Linear(20, 5))
    q, rows = convert(fp, 5, terms=2, per_channel=True, signed=False, require_batchnorm=False)   # 7: no BatchNorm
    assert kinds(q) == ["FirstConv8bit", "QuantConv2d", "QuantLinear", "LastLinear8bit"]
    assert q[2].groups == 4 and q[2].weight_alpha.shape == (32, 1, 1, 1) and q[7].weight_alpha.shape == (20, 1)
    assert forward_backward(q, torch.randn(4, 3, 8, 8)) == []
    q, _ = convert(fp, 4, first_last_bits=None, skip=["8"], signed=["7"], require_batchnorm=False)
    assert kinds(q) == ["QuantConv2d", "QuantConv2d", "QuantLinear", "Linear"] and q[7].signed and not q[2].signed


def test_signed_inputs_quantize_negatives_to_negative_levels():
    layer = QuantLinear(4, 2, bit=4, signed=True, act_alpha=2.0)
    x = torch.tensor([-3.0, -1.2, -0.5, 0.0, 0.5, 1.2, 3.0])
    q = layer._quantized_input(x)
    assert torch.equal(q, -layer._quantized_input(-x))                     # symmetric
    assert (q[:3] < 0).all() and q[0] == -2.0 and q[-1] == 2.0             # clipped at ±α
    magnitudes = set((layer.act_levels * 2.0).tolist())
    assert set(q.abs().tolist()) <= magnitudes and len(layer.act_levels) == 8      # sign + 3-bit magnitudes
    unsigned = QuantLinear(4, 2, bit=4, act_alpha=2.0)._quantized_input(x)
    assert (unsigned[:3] == 0).all()                                        # the release's set drops them


def test_what_convert_cannot_do_is_refused():
    fp = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 8, 2), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"cannot quantize 1 \(ConvTranspose2d\)"):
        convert(fp, 4, signed=False)
    with pytest.raises(ValueError, match="lazy"):
        convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(3)), 4, signed=False)
    with pytest.raises(ValueError, match="already quantized"):
        convert(ModelSpec("cifar10", "resnet20", 4).build(), 4, signed=False)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1))
    with pytest.raises(ValueError, match="bit must be 2..8"):
        convert(plain, 9, signed=False)
    with pytest.raises(ValueError, match="terms"):
        convert(plain, 4, terms=5, signed=False)
    with pytest.raises(ValueError, match="example"):
        convert(plain, 4, signed="auto")
    with pytest.raises(ValueError, match="only with signed='auto'"):
        convert(plain, 4, signed="graph", example=torch.rand(1, 3, 8, 8))
    assert convert(plain, 4).rows == convert(plain, 4, signed="graph").rows     # no data needed: the graph rule
    with pytest.raises(ValueError, match="does not have"):
        convert(plain, 4, skip=["conv9"], signed=False)
    q, _ = convert(plain, 4, signed=False)
    reflect = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
                            nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    with pytest.raises(ValueError, match="pads with zeros"):
        to_integer(convert(reflect, 4).model)
    assert isinstance(q[0], FirstConv8bit) and isinstance(q[4], FirstConv8bit)    # a last convolution: 8-bit too
    assert not isinstance(q[0], LastLinear8bit)


class _Fork(nn.Module):
    """Layer b feeds a BatchNorm and, beside it, the sum: its 1/σ would reach the sum unnormalized."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.norm = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return self.fc((self.norm(y) + y).mean((2, 3)))


def test_a_layer_without_batchnorm_after_it_is_refused_by_name():
    """A b-bit layer computes with σ-normalized weights: without a BatchNorm straight after it (and nowhere else)
    its output would keep a 1/σ scale. convert refuses such layers by name unless skipped or allowed."""
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1))
    with pytest.raises(ValueError, match=r"^2: no BatchNorm right after, so as 4-bit layers .*pass their names in skip"):
        convert(plain, 4)
    assert [r["bit"] for r in convert(plain, 4, skip=["2"]).rows] == [8, 32, 4, 8]
    assert convert(plain, 4, require_batchnorm=False).model.conversion["require_batchnorm"] is False
    with pytest.raises(ValueError, match=r"^b: no BatchNorm right after"):
        convert(_Fork(), 4)
    assert layers_without_batchnorm(_Fork(), ["a", "b"]) == ["a", "b"]


def test_calibrate_a_converted_mobilenet():
    torch.manual_seed(0)
    fp = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25).eval()
    images = torch.randn(16, 3, 32, 32)
    q = calibrate(convert(fp, 4, example=images).model, fp, images, Calibration(), log=lambda line: None)
    layers = [m for m in q.modules() if isinstance(m, QuantConv2d)]
    assert all(m.act_alpha.item() != 8.0 and m.weight_alpha.item() != 3.0 for m in layers)
    with torch.no_grad(), frozen_weights(q):
        assert torch.isfinite(q(images)).all()


def plain_resnet20() -> nn.Module:
    """The release's ResNet-20 with every layer a plain nn.Conv2d / nn.Linear (as a user's own model would be)."""
    model = ModelSpec("cifar10", "resnet20", 32).build()
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Conv2d):
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=False)
        elif isinstance(m, nn.Linear):
            plain = nn.Linear(m.in_features, m.out_features)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model


@pytest.mark.slow
def test_a_converted_plain_resnet20_is_the_released_4bit_model(ref):
    """A plain ResNet-20 holding the released 4-bit checkpoint's weights, converted at 4 bits (signed inputs
    chosen from the images: none), with the release's α loaded, predicts as the released model, image for image."""
    test = data.load_npz(ref("cifar10/test_first1000_lossless.npz"))
    x = data.normalize(test.x)
    released = load_model("cifar10", "resnet20", 4, "release", log=lambda line: None).eval()
    state = released.state_dict()
    plain = plain_resnet20()
    plain.load_state_dict({k: v for k, v in state.items() if "alpha" not in k})
    converted, rows = convert(plain, 4, example=x[:200])
    assert not any(r["signed"] for r in rows)
    converted.load_state_dict(state)
    converted.eval()
    with torch.no_grad(), frozen_weights(converted), frozen_weights(released):
        logits = torch.cat([converted(b) for b in x.split(250)])
        assert torch.equal(logits.argmax(1), torch.cat([released(b) for b in x.split(250)]).argmax(1))
        # its layers allow the integer path (unsigned inputs, no groups): the same logits, layer swap for layer swap
        assert torch.equal(to_integer(converted)(x[:250]), logits[:250])


def test_train_a_converted_model_from_python():
    """The toolkit's training loop and the release's SGD groups (α with their own rates) on a converted MobileNetV2."""
    torch.manual_seed(0)
    fp = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    q = calibrate(convert(fp, 4, example=images).model, fp, images, Calibration(), log=lambda line: None)
    # a fine-tune's α rates (the recipe's 0.1 is meant for 300 epochs: on this random network it pushes an α below 0
    # within a step, which the loop stops as it should)
    recipe = dataclasses.replace(default_recipe("cifar10", 4), act_alpha_lr=0.01, weight_alpha_lr=0.002)
    groups = parameter_groups(set_quantizer_options(q, recipe), recipe)
    assert {g["name"] for g in groups} == {"weights", "act_alpha", "weight_alpha"}
    optimizer = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
    before = {n: p.detach().clone() for n, p in q.named_parameters() if n.endswith("act_alpha")}
    result = train_one_epoch(q, [(images, labels)] * 2, optimizer)
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert any(not torch.equal(p, before[n]) for n, p in q.named_parameters() if n in before)   # α learn


def _small_cnn(width: int = 8):
    """A depthwise-separable CNN with biased convolutions, each b-bit one feeding a BatchNorm; layer 5 is signed."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1, groups=width), nn.BatchNorm2d(width),
                         nn.Conv2d(width, 16, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@pytest.mark.parametrize("make", [_small_cnn, lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25),
                                  lambda: torchvision.models.resnet18(num_classes=10)], ids=["small_cnn", "mobilenet_v2", "resnet18"])
def test_your_network_from_convert_to_a_file_and_back(make, tmp_path):
    """The road a user's network takes (issue 38), every step through the front door: convert with no other
    argument, calibrate, two training steps by keyword, save; loaded into a fresh float copy of the architecture,
    the file gives the same logits, with what convert chose (signed layers, weight normalization) read from it;
    validate; to integers, whose float arithmetic is the fake-quantized model's bit for bit and whose integer
    arithmetic gives its predictions; the exported integer file loaded back (with the float architecture) gives the
    integer model's logits; and the exact ONNX file, at two image sizes, gives the integer path's predictions, its
    logits bit for bit where every step is the integer path's own (MobileNetV2 pools by a function in its forward)."""
    import apot_utils as apot

    torch.manual_seed(0)
    float_model = make().eval()
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    quantized = apot.calibrate(apot.convert(float_model, 4, weight_norm="std").model, float_model, images,
                               log=lambda line: None)
    recipe = dataclasses.replace(apot.default_recipe("cifar10", 4), lr=1e-3, act_alpha_lr=1e-3, weight_alpha_lr=5e-4)
    optimizer = torch.optim.SGD(apot.parameter_groups(quantized, recipe), lr=recipe.lr, momentum=0.9)
    result = apot.train_one_epoch(quantized, [(images[:8], labels[:8]), (images[8:], labels[8:])], optimizer,
                                  teacher=float_model)
    assert math.isfinite(result["loss"])
    path = apot.save_quantized(quantized, tmp_path / "mine.pth.tar")
    loaded = apot.load_quantized(path, make())
    assert loaded.conversion == quantized.conversion and loaded.conversion["weight_norm"] == "std"
    with torch.no_grad():
        logits = quantized.eval()(images)
        assert torch.equal(logits, loaded(images))
    with pytest.raises(FileExistsError):
        apot.save_quantized(quantized, path)
    scored = apot.validate(loaded, [(images, labels)], 1, torch.device("cpu"), log=lambda line: None)
    assert scored.top1 == pytest.approx(100 * float((logits.argmax(1) == labels).float().mean()))

    integer, larger = apot.to_integer(loaded), torch.randn(2, 3, 48, 48)
    with torch.inference_mode():
        assert torch.equal(integer(images), logits)                  # float arithmetic: the fake-quantized model's
        with apot.integer_arithmetic(integer):
            exact = integer(images)
            exact_larger = integer(larger)
    assert torch.equal(exact.argmax(1), logits.argmax(1))
    file = apot.save_exported(integer, tmp_path / "mine.safetensors")
    with pytest.raises(ValueError, match="pass float_model"):
        apot.load_exported(file)
    from_file = apot.load_exported(file, float_model=make())
    with torch.inference_mode(), apot.integer_arithmetic(from_file):
        assert torch.equal(from_file(images), exact)

    pytest.importorskip("onnxruntime", reason="the ONNX step needs the deploy extra: pip install -e '.[deploy]'")
    onnx_file = apot.save_onnx(apot.to_onnx(integer, "exact"), tmp_path / "mine.onnx")
    runtime = apot.OnnxRuntimeModel(onnx_file)
    for x, expected in ((images, exact), (larger, exact_larger)):
        got = runtime(x)
        assert torch.equal(got.argmax(1), expected.argmax(1))
        if not any(node.target is F.adaptive_avg_pool2d for node in torch.fx.symbolic_trace(make()).graph.nodes):
            assert torch.equal(got, expected)          # every step the integer path's arithmetic: the same bits
        else:       # MobileNetV2 pools in its forward, by torch's own summation: the same up to float32 rounding
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_converted_file_needs_its_own_float_architecture(tmp_path):
    import apot_utils as apot

    float_model = _small_cnn().eval()
    quantized = apot.convert(float_model, 3).model
    path = apot.save_quantized(quantized, tmp_path / "mine.pth.tar")
    with pytest.raises(ValueError, match="pass float_model"):
        apot.load_quantized(path)
    with pytest.raises(apot_checkpoints.CheckpointError, match="against the float model given"):
        apot.load_quantized(path, _small_cnn(width=4))                   # the same layers, other widths
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    with pytest.raises(apot_checkpoints.CheckpointError, match="cannot be converted as the file records"):
        apot.load_quantized(path, other)                                 # no layer '5' to make signed
    spec_file = apot.save_quantized(apot.ModelSpec("cifar10", "resnet20", 3).build(), tmp_path / "r20.pth.tar")
    assert apot.load_quantized(spec_file).spec == apot.ModelSpec("cifar10", "resnet20", 3)
    with pytest.raises(ValueError, match="drop float_model"):
        apot.load_quantized(spec_file, float_model)


def test_the_released_full_precision_model_converts(ref):
    """The release's full-precision ResNet-20 (8-bit first and last layers, 32-bit QuantConv2d between) is a float
    network to convert: its ends are kept, the rest quantized, and calibrated it is post_training_quantize's model,
    α for α and logit for logit."""
    import apot_utils as apot

    x = data.normalize(data.load_npz(ref("cifar10/test_first1000_lossless.npz")).x[:64])     # skips without the data
    fp = load_model("cifar10", "resnet20", 32, "release", log=lambda line: None).eval()
    conversion = apot.convert(fp, 4)
    assert [(r["name"], r["bit"]) for r in conversion.rows if r["bit"] == 8] == [("conv1", 8), ("fc", 8)]
    assert not hasattr(conversion.model, "spec") and not any(r["signed"] for r in conversion.rows)
    converted = apot.calibrate(conversion.model, fp, x, log=lambda line: None)
    built = apot.post_training_quantize(fp, ModelSpec("cifar10", "resnet20", 4, weight_norm="mean_std"), x,
                                        log=lambda line: None)
    assert apot.alphas(converted) == apot.alphas(built)
    with torch.no_grad():
        assert torch.equal(converted.eval()(x), built.eval()(x))
    with pytest.raises(ValueError, match="not the first and last"):
        apot.convert(fp, 4, first_last_bits=None)
