"""Integer inference: packed codes, the integer and shift-and-add convolutions, export and load, the
integer path against the fake-quantized model, and the cost counts."""
import pytest
import torch

from apot_utils.integer import costs
from apot_utils.files import data
from apot_utils.commands.export import export_checkpoint
from apot_utils.integer.arithmetic import (FLOAT64_EXACT, accumulator_bound, integer_conv2d, pack_codes, power_of_two_parts,
                                          shift_add_conv2d, unpack_codes)
from apot_utils.integer.convert import to_integer
from apot_utils.integer.format import load_exported, save_exported
from apot_utils.integer.verify import compare_with_float, layer_trace
from apot_utils.cli import main
from apot_utils.files.checkpoints import CheckpointError
from apot_utils.fakequant.layers import frozen_weights, quantized_layers
from apot_utils.core.levels import integer_levels, level_set
from apot_utils.fakequant.spec import ModelSpec
from apot_utils.fakequant.loading import load_model

RELEASED = (2, 3, 4)


@pytest.mark.parametrize("bits", range(2, 9))
def test_packed_codes_round_trip(bits):
    codes = torch.randint(0, 1 << bits, (1001,), generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-1001 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 1001), codes)
    with pytest.raises(ValueError):
        pack_codes(codes + (1 << bits), bits)


@pytest.mark.parametrize("bits", (2, 3, 4, 5, 6))
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (2, 0)])
def test_shift_add_convolution_equals_the_integer_convolution(bits, stride, padding):
    """Random codes of the b-bit activation set and the signed (b-1)-bit weight set."""
    g = torch.Generator().manual_seed(bits)
    act, mag = integer_levels(bits), integer_levels(bits - 1)
    a = act[torch.randint(0, len(act), (2, 5, 9, 9), generator=g)]
    w = mag[torch.randint(0, len(mag), (4, 5, 3, 3), generator=g)] * (1 - 2 * torch.randint(0, 2, (4, 5, 3, 3), generator=g))
    exact = integer_conv2d(a, w, stride, padding)
    assert exact.dtype == torch.int64
    assert torch.equal(shift_add_conv2d(a, w, stride, padding), exact)
    parts = power_of_two_parts(w)
    assert len(parts) <= max(bin(int(v)).count("1") for v in mag)           # APoT: at most n shift-adds
    assert accumulator_bound(int(act[-1]), w) < FLOAT64_EXACT      # float64 holds every partial sum exactly
    f64 = torch.nn.functional.conv2d(a.double(), w.double(), stride=stride, padding=padding)
    assert torch.equal(f64.long(), exact)


def test_integer_levels_are_the_level_sets():
    for bits in range(2, 7):
        ints = integer_levels(bits)
        assert torch.allclose((ints.double() / ints[-1]).float(), level_set(bits), rtol=0, atol=6e-8)


def test_the_integer_model_is_in_eval_mode_as_returned():
    """to_integer's new layers (BatchNorm included) are in eval mode: its float path is the model's, logit for logit."""
    torch.manual_seed(0)
    model = ModelSpec("cifar10", "resnet20", 4).build()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    integer = to_integer(model.train())
    assert not any(m.training for m in integer.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), frozen_weights(model.eval()):
        assert torch.equal(integer(x), model(x))


@pytest.mark.parametrize("terms, per_channel", [(None, True), (3, False)])
def test_export_round_trip_of_any_configuration(tmp_path, terms, per_channel):
    torch.manual_seed(0)
    model = ModelSpec("cifar10", "resnet20", 5, "apot", terms, per_channel).build().eval()
    for _, layer in quantized_layers(model):
        layer.weight_alpha.data.uniform_(1.5, 3.0)
        layer.act_alpha.data.fill_(2.0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    path = save_exported(to_integer(model), tmp_path / "m.safetensors", {"dataset": "cifar10", "arch": "resnet20", "bit": 5,
                                                            "scheme": "apot", "terms": terms, "per_channel": per_channel})
    x = torch.randn(8, 3, 32, 32)
    loaded = load_exported(path)
    with torch.no_grad(), frozen_weights(model):
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(FileExistsError):
        save_exported(to_integer(model), path, {})


@pytest.fixture(scope="module")
def exact_images(ref):
    test = data.load_npz(ref("cifar10/test_first1000_lossless.npz"))
    return data.normalize(test.x), test.y


@pytest.fixture(scope="module")
def exported(tmp_path_factory, exact_images):
    folder = tmp_path_factory.mktemp("exported")
    return {bit: export_checkpoint("cifar10", "resnet20", bit, "release", folder / f"r{bit}.safetensors",
                                          log=lambda line: None) for bit in RELEASED}


@pytest.mark.slow
@pytest.mark.parametrize("bit", RELEASED)
def test_the_exported_file_is_the_checkpoints_model(bit, exported, exact_images):
    """The loaded file is the checkpoint's float32 model, logit for logit."""
    x, _ = exact_images
    reference = load_model("cifar10", "resnet20", bit, "release", log=lambda line: None).eval()
    loaded = load_exported(exported[bit])
    with torch.no_grad(), frozen_weights(reference):
        assert torch.equal(torch.cat([loaded(b) for b in x.split(100)]), torch.cat([reference(b) for b in x.split(100)]))


@pytest.mark.slow
def test_integer_path_equals_the_quantized_model(exported, exact_images):
    """At 3 bits (the comparison is the same code at every bitwidth; chapter 07 runs it at 2 and 3 bits)."""
    x, y = exact_images
    found = compare_with_float(exported[3], x, y)
    # float64 float parts: integer codes and exact integer convolutions against the fake-quantized model on exact levels
    assert found["float64_rel_diff"] < 1e-9
    # float32 float parts: the same predictions, except where an activation lies within float32 rounding of a
    # midpoint between two levels; each such image is found and explained: its first flipped input differs
    # between the two arithmetics by less than 1e-5 α, no more than that layer's other inputs do
    for difference in found["float32_differences"]:
        assert "gap" in difference and difference["gap"] < 1e-5, difference
        assert difference["gap"] <= difference["layer_gap"]
    assert abs(found["top1_integer"] - found["top1_float32"]) <= 0.1 * len(found["float32_differences"])


def test_layer_trace_from_codes_to_shift_adds(exported, exact_images):
    trace = layer_trace(load_exported(exported[3]), exact_images[0][:4], "layer2.0.conv1")
    assert torch.equal(trace["shift_add"], trace["integer"])
    rescaled = trace["integer"].double() * trace["scale"].view(1, -1, 1, 1)
    assert torch.allclose(rescaled.float(), trace["fake"], rtol=1e-5, atol=1e-5)
    assert int(trace["weight_integers"].abs().max()) <= 4 and int(trace["act_integers"].max()) <= 10   # 3 bits: I_max 4 and 10


def test_cli_export_then_validate(exported, tmp_path, capsys, ref):
    first1000 = str(ref("cifar10/test_first1000_lossless.npz"))
    assert main(["validate", "--bit", "3", "--data", first1000, "--limit", "300"]) == 0
    released = capsys.readouterr().out.splitlines()[-1]
    assert main(["validate", "--checkpoint", str(exported[3]), "--data", first1000, "--limit", "300"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == released
    size = exported[3].stat().st_size
    assert size < 0.1 * ref("checkpoints/cifar10/res20_3bit.pth.tar").stat().st_size


def test_loading_something_else_is_refused(tmp_path):
    from safetensors.torch import save_file
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something"})
    with pytest.raises(CheckpointError, match="not an exported APoT model"):
        load_exported(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_exported(junk)


def test_fixops_reproduce_the_papers_table_3():
    """ResNet-18: full precision 1.82G; 5/5-bit APoT 616M, uniform 781M; 3/3-bit APoT 298M, uniform 357M."""
    paper = {(32, "apot"): 1820e6, (5, "apot"): 616e6, (5, "uniform"): 781e6, (3, "apot"): 298e6, (3, "uniform"): 357e6}
    for (bit, scheme), value in paper.items():
        rows = costs.layer_rows(ModelSpec("imagenet", "resnet18", bit, scheme).build(), (3, 224, 224))
        assert costs.totals(rows)["FixOPS"] == pytest.approx(value, rel=0.005), (bit, scheme)
    rows = costs.layer_rows(ModelSpec("cifar10", "resnet20", 3).build(), (3, 32, 32))
    assert rows[1]["weight terms"] == 1 and rows[1]["act terms"] == 2        # 3-bit APoT: n_w = 1, n_a = 2
    assert rows[1]["shift-adds"] == rows[1]["MACs"]
    assert rows[1]["act comparisons"] == 16 * 32 * 32 * 7           # every input activation: 2^3 − 1 thresholds
    assert rows[0]["act comparisons"] is None                          # the 8-bit first layer sees the image
