"""Files and values whose contents would end in a traceback or a silent wrong answer (issue 37's defects): an ONNX
file that is not the exporter's, a 60000×60000 JPEG header, NaN images in the integer path, a run whose recorded
recipe this version cannot read, non-positive α with autograd on, and calibration given the wrong things."""
import io
import zipfile

import pytest
import torch

from apot_utils.files import data
from apot_utils.fakequant.spec import ModelSpec


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from apot_utils.commands.export import export_checkpoint

    folder = tmp_path_factory.mktemp("onnx")
    model = ModelSpec("cifar10", "resnet20", 3).build()
    path = folder / "random3.pth.tar"
    torch.save({"state_dict": model.state_dict(), "meta": model.spec.meta()}, path)
    return export_checkpoint("cifar10", "resnet20", None, path, folder / "m.onnx", "onnx", "float", log=lambda line: None)


def rewritten_onnx(path, tmp_path, change):
    import onnx

    proto = onnx.load(path)
    change(proto)
    out = tmp_path / "changed.onnx"
    onnx.save(proto, out)
    return out


def drop_variant(proto):
    kept = [p for p in proto.metadata_props if p.key != "variant"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)


def five_classes(proto):
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5


def small_input(proto):
    for d in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_value = 64


def deeply_nested_bit(proto):
    next(p for p in proto.metadata_props if p.key == "bit").value = "[" * 100_000


@pytest.mark.parametrize("change, message", [(drop_variant, "lacks variant"), (five_classes, "[N, 10]"),
                                             (small_input, "[N, 3, 32, 32]"),
                                             (deeply_nested_bit, "its metadata 'bit' is nested too deeply")])
def test_an_onnx_file_that_is_not_the_exporters_is_named(change, message, onnx_file, tmp_path, cli):
    cli("validate", "--checkpoint", rewritten_onnx(onnx_file, tmp_path, change), "--limit", "1").assert_clean_error(message)


def test_a_huge_jpeg_header_is_refused_before_decoding(tmp_path):
    from PIL import Image

    header = io.BytesIO()
    Image.new("RGB", (32, 32)).save(header, "JPEG")
    raw = bytearray(header.getvalue())
    sof = raw.index(b"\xff\xc0")                       # start of frame: height and width, big-endian
    raw[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("test/cat/0001.jpg", bytes(raw))
    with pytest.raises(ValueError, match="member test/cat/0001.jpg"):        # PIL refuses it from the header
        data.load_jpeg_zip(path, "test", progress=False)


def test_nan_images_in_the_integer_path_are_named(ref, tmp_path):
    ref("checkpoints/cifar10/res20_3bit.pth.tar")                # the released model it exports
    from apot_utils.commands.export import export_checkpoint
    from apot_utils.integer.format import load_exported
    from apot_utils.integer.layers import integer_arithmetic

    path = export_checkpoint("cifar10", "resnet20", 3, "release", tmp_path / "r3.safetensors", log=lambda line: None)
    model = load_exported(path)
    images = torch.zeros(2, 3, 32, 32)
    images[1, 0, 5, 5] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or infinity"), torch.no_grad(), integer_arithmetic(model):
        model(images)


def test_a_recorded_recipe_this_version_cannot_read_is_named(tmp_path, cli, first1000):
    out = tmp_path / "run"
    out.mkdir()
    state = ModelSpec("cifar10", "resnet20", 3).build().state_dict()
    meta = ModelSpec("cifar10", "resnet20", 3).meta() | {"epoch": 1, "best_acc1": 1.0,
                                                          "recipe": {"lr": 0.1, "flavour": "vanilla"}}
    torch.save({"state_dict": state, "meta": meta, "optimizer": {}, "scheduler": {}}, out / "checkpoint.pth.tar")
    run = cli("train", "--data", first1000, "--val-data", first1000, "--out", out, "--resume", "--no-progress")
    run.assert_clean_error("recorded recipe", "flavour")


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["act_alpha", "weight_alpha"])
def test_a_bad_alpha_is_refused_with_autograd_on(which, value):
    from apot_utils.fakequant.layers import QuantConv2d

    layer = QuantConv2d(4, 4, 3, bit=3)
    with torch.no_grad():
        getattr(layer, which).fill_(value)
    with pytest.raises(ValueError, match="finite positive"):
        layer(torch.rand(1, 4, 6, 6)).sum().backward()


def test_calibrate_says_what_it_was_given_wrong():
    from torch import nn
    from apot_utils.fakequant.convert import convert
    from apot_utils.fakequant.ptq import calibrate

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1))
    q = convert(net, 4, signed="graph", require_batchnorm=False).model
    with pytest.raises(TypeError, match="one tensor"):
        calibrate(q, net, [torch.rand(3, 8, 8)] * 4)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1))
    with pytest.raises(ValueError, match="not the model that was converted"):
        calibrate(q, other, torch.rand(4, 3, 8, 8))


def test_a_failed_calibration_leaves_the_model_in_its_dtype_and_affine_free_batchnorm_is_fine():
    from torch import nn
    from apot_utils.fakequant.convert import convert
    from apot_utils.fakequant.ptq import Calibration, calibrate

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.Conv2d(8, 2, 1))
    q = convert(net, 4, require_batchnorm=False).model
    with pytest.raises(ValueError, match="percentile"):          # every input 0 at the 1st percentile: refused
        calibrate(q, net, torch.rand(4, 3, 8, 8), Calibration("percentile", 1.0), log=lambda line: None)
    assert all(p.dtype == torch.float32 for p in q.parameters())
    calibrate(q, net, torch.rand(4, 3, 8, 8), log=lambda line: None)
    assert all(p.dtype == torch.float32 for p in q.parameters())
