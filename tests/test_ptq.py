"""Post-training quantization: deterministic, α inside the data's range, round trip through validate,
clear errors; and quantization-aware training starting from it."""
import pytest
import torch

from apot_utils import data, ptq
from apot_utils.__main__ import main
from apot_utils.layers import quantized_layers
from apot_utils.pipeline import load_model, validate_cifar10
from apot_utils.quantize import normalize_weight


@pytest.fixture(scope="module")
def setup():
    from conftest import reference_file
    first1000 = reference_file("cifar10/test_first1000_lossless.npz")
    fp = load_model("cifar10", "resnet20", 32, reference_file("checkpoints/cifar10/res20_32bit.pth.tar"),
                    log=lambda line: None)
    images = data.normalize(data.load_npz(first1000).sample(64, seed=1).x)
    return fp, images, first1000


def test_deterministic_and_alpha_within_the_data(setup):
    fp, images, _ = setup
    a = ptq.post_training_quantize(fp, "cifar10", "resnet20", 4, images, log=lambda line: None)
    b = ptq.post_training_quantize(fp, "cifar10", "resnet20", 4, images, log=lambda line: None)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    for name, layer in quantized_layers(a):
        w = normalize_weight(layer.weight.detach()).abs()
        assert 0 < layer.weight_alpha.item() <= float(w.max()) + 0.01, name
        x = ptq._inputs_of(a, layer, list(images.split(32)))
        assert 0 < layer.act_alpha.item() <= float(x.max()), name
    assert torch.allclose(fp.bn1.running_mean, a.bn1.running_mean)        # after the unnormalized 8-bit first layer
    ratio = (a.layer1[0].bn1.running_var / fp.layer1[0].bn1.running_var).sqrt()  # after a normalized quantized conv
    sigma = fp.layer1[0].conv1.weight.std().item()
    assert ratio.median().item() == pytest.approx(1 / sigma, rel=0.3)           # outputs in units of 1/σ


def test_percentile_rule(setup):
    fp, images, _ = setup
    model = ptq.post_training_quantize(fp, "cifar10", "resnet20", 4, images, calibration=ptq.Calibration("percentile", 99.0),
                                       log=lambda line: None)
    name, layer = quantized_layers(model)[0]
    x = ptq._inputs_of(model, layer, [images])
    assert layer.act_alpha.item() == pytest.approx(float(torch.quantile(x.double().flatten()[:1 << 20], 0.99)), rel=1e-4)


def test_cli_round_trip_through_validate(setup, tmp_path, capsys):
    _, _, first1000 = setup
    out = tmp_path / "ptq5.pth.tar"
    assert main(["quantize", "--bit", "5", "--calib", "64", "--data", str(first1000), "--out", str(out)]) == 0
    meta = torch.load(out, weights_only=True)["meta"]
    assert (meta["bit"], meta["scheme"], meta["post_training"]["calib_images"]) == (5, "apot", 64)
    model = load_model("cifar10", "resnet20", None, out, log=lambda line: None)
    test = data.load_npz(first1000).subset(200)
    direct = validate_cifar10(model, test, "cpu", log=lambda line: None)
    capsys.readouterr()
    assert main(["validate", "--checkpoint", str(out), "--data", str(first1000), "--limit", "200"]) == 0
    assert f" * Prec {direct.top1:.3f}% " in capsys.readouterr().out
    assert direct.top1 > 80


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--bit", "9", "--out", "x.pth.tar"], "invalid choice"),
    (["quantize", "--bit", "32", "--out", "x.pth.tar"], "quantize needs --bit 2..8"),
    (["quantize", "--bit", "4", "--calib", "0", "--out", "x.pth.tar"], "must be at least 1"),
    (["quantize", "--bit", "4", "--init", "QUANTIZED", "--out", "x.pth.tar"], "post-training quantization starts from a full-precision"),
])
def test_bad_arguments_write_nothing(argv, message, ref, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [str(ref("checkpoints/cifar10/res20_3bit.pth.tar")) if a == "QUANTIZED" else a for a in argv]
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    assert status == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten(setup, tmp_path, capsys):
    _, _, first1000 = setup
    out = tmp_path / "taken.pth.tar"
    out.write_bytes(b"mine")
    assert main(["quantize", "--bit", "4", "--calib", "8", "--data", str(first1000), "--out", str(out)]) == 2
    assert out.read_bytes() == b"mine" and "exists" in capsys.readouterr().err


def test_training_from_full_precision_starts_from_calibrated_alpha(ref, tmp_path):
    from apot_utils import train

    first1000 = ref("cifar10/test_first1000_lossless.npz")
    base = dict(bit=4, init=ref("checkpoints/cifar10/res20_32bit.pth.tar"), data_source=first1000, val_source=first1000,
                subset=128, val_subset=100, max_steps=1, device="cpu", progress=False, calib=64,
                recipe=train.shortened(train.default_recipe("cifar10", 4), 1))
    starts = {}
    for calibrate in (True, False):
        cfg = train.TrainConfig(out=tmp_path / str(calibrate), calibrate_init=calibrate, **base)
        lines = []
        train.train(cfg, log=lines.append)
        starts[calibrate] = float(next(l for l in lines if "before the first step" in l).split("top-1 ")[1].split(" %")[0])
    assert starts[True] > 80 > 30 > starts[False]
