"""Post-training calibration of torchvision's ResNet-18 (issue 40): the weight-α search from sorted rows
(``alpha_search.SortedRows``, the default) against the same search quantizing every candidate (the direct definition,
the baseline), interleaved in one run; then ``calibrate`` end to end, the activation α on 32 images included.

Weight α of every quantized layer at 4 bits, per layer and per channel; the two searches choose the same α
(checked here, and by tests/test_ptq.py). Reports median, min, max and the ratio of medians. ``calibrate`` end to end
is timed against its floor, one float64 forward pass of each model over the images (the calibration makes one of the
full-precision model and one of the quantized model, :func:`apot_utils.fakequant.ptq.calibrate`), interleaved.
Run: python benchmarks/bench_calibrate.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import copy

import torch
import torchvision
from _common import interleaved, table, write

import apot_utils as apot
from apot_utils.fakequant.alpha_search import WEIGHT_ALPHA_RANGE, WEIGHT_ALPHA_STEP, best_weight_alphas, coarse_to_fine
from apot_utils.fakequant.quantizers import quantize_weight


def direct_search(rows: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """The baseline: every candidate α's error computed by quantizing the rows."""
    def error(alphas):
        with torch.no_grad():
            return (quantize_weight(rows, alphas.view(-1, 1), magnitudes) - rows).square().mean(dim=1)
    return coarse_to_fine(error, *WEIGHT_ALPHA_RANGE, WEIGHT_ALPHA_STEP, rows=len(rows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    float_model = torchvision.models.resnet18(num_classes=1000).eval()
    quantized = apot.convert(float_model, 4).model
    layers = [layer for _, layer in apot.quantized_layers(quantized)]
    rows = {per_channel: [(n.flatten(1) if per_channel else n.reshape(1, -1), layer.weight_levels)
                          for layer in layers for n in [apot.normalize_weight(layer.weight.detach().double())]]
            for per_channel in (False, True)}
    for pairs in rows.values():
        for r, levels in pairs:
            assert torch.equal(best_weight_alphas(r, levels), direct_search(r, levels)), "the searches chose other α"
    cases = {}
    for per_channel, pairs in rows.items():
        kind = "per channel" if per_channel else "per layer"
        cases[f"weight α {kind}, quantizing every candidate (baseline)"] = \
            lambda pairs=pairs: [direct_search(r, levels) for r, levels in pairs]
        cases[f"weight α {kind}, sorted rows"] = \
            lambda pairs=pairs: [best_weight_alphas(r, levels) for r, levels in pairs]
    timings = interleaved(cases, repeat=args.repeat)
    images = torch.randn(32, 3, 224, 224)
    float64 = copy.deepcopy(float_model).double()

    def two_forwards():                 # the floor of a one-pass calibration: each model once over the images
        with torch.no_grad():
            float64(images.double()), float64(images.double())

    whole = interleaved({"calibrate": lambda: apot.calibrate(apot.convert(float_model, 4).model, float_model, images,
                                                             log=lambda line: None),
                         "two float64 forwards": two_forwards}, repeat=args.repeat)
    end_to_end, forwards = whole["calibrate"]["median"], whole["two float64 forwards"]["median"]
    out = []
    for kind in ("per layer", "per channel"):
        base = timings[f"weight α {kind}, quantizing every candidate (baseline)"]
        new = timings[f"weight α {kind}, sorted rows"]
        out.append({"search": f"weight α {kind}", "baseline median s": base["median"], "min": base["min"],
                    "max": base["max"], "sorted rows median s": new["median"], "min ": new["min"], "max ": new["max"],
                    "speed-up": base["median"] / new["median"]})
    table(out)
    print(f"calibrate end to end (ResNet-18, 4 bits, 32 random 224-px images): {end_to_end:.1f} s (median; "
          f"[{whole['calibrate']['min']:.1f}, {whole['calibrate']['max']:.1f}]), {end_to_end / forwards:.2f}× two "
          f"float64 forward passes of the model over those images ({forwards:.1f} s)")
    write("bench_calibrate_cpu", out, calibrate_end_to_end_seconds=end_to_end, calibrate=whole["calibrate"],
          two_float64_forwards=whole["two float64 forwards"], calibrate_x_two_forwards=end_to_end / forwards,
          layers=len(layers))


if __name__ == "__main__":
    main()
