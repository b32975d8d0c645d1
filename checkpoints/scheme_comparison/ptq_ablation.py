"""Post-training quantization of the released full-precision ResNet-20 under each weight normalization (issue 36,
item 3), scored and written to ``ptq_ablation.json`` beside this script.

    APOT_DATA_DIR=... python checkpoints/scheme_comparison/ptq_ablation.py

Each weight normalization of :func:`apot_utils.core.reference.normalize_weight` ('mean_std', the releases'
(w − mean) / std; 'std', w / std; 'channel_std', w / std per output channel) at 8 bits (APoT) and at 4, 3 and 2 bits
for APoT, uniform and power-of-two: ``post_training_quantize`` on the same 512 training images (the 45,000-image
split of ``run.py``, seed 0), the α search and BatchNorm transfer of ``quantize``'s defaults. Every model is scored on
the 5,000 held-out training images, the exact first 1,000 test images and the JPEG copy's 10,000, keeping which test
images each gets right. The normalization ``quantize`` uses by default is chosen on the held-out images alone (the
highest mean top-1 over the ten quantized models), never on a test image; the schemes are then compared at that
normalization as ``results.py`` compares the trained ones (McNemar, Holm within each test set, paired intervals).
Last, ``draws``: the 8-bit APoT model at ``quantize``'s default normalization on two more draws of 512 calibration
images (seeds 1 and 2; seed 0 is the table's), to see how far the draw moves the 8-bit result; and the draw that
``python -m apot_utils quantize --bit 8`` itself calibrates on (512 of all 50,000 JPEG training images, seed 0:
the held-out images included, so it is scored on the test sets only).
Resumable: a model already in the file is not redone. About 45 minutes on a 2-core CPU.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from apot_utils.core.reference import WEIGHT_NORMS
from apot_utils.fakequant.loading import load_model
from apot_utils.fakequant.ptq import PTQ_WEIGHT_NORM, post_training_quantize
from apot_utils.notebook.stats import holm, mcnemar_p, paired_interval
from apot_utils.fakequant.spec import ModelSpec
from apot_utils.files import data

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import TEST_SETS, correct_from_bits, score_model, test_sets  # noqa: E402
from run import make_split  # noqa: E402

OUT = HERE / "ptq_ablation.json"
CALIB_IMAGES, CALIB_SEED = 512, 0
MODELS = [(8, "apot")] + [(bit, scheme) for bit in (4, 3, 2) for scheme in ("apot", "uniform", "pot")]
DRAW_SEEDS = (1, 2)      # more calibration draws of the 8-bit model (seed 0: the table's)


def scheme_comparisons(models: dict, norm: str) -> list[dict]:
    """APoT against uniform and against power-of-two at 4, 3, 2 bits under ``norm``, Holm within each test set.
    (At 2 bits APoT's set is power-of-two's, {0, ¼, ½, 1}: that pair is the same model and is left out.)"""
    rows = []
    for test in TEST_SETS:
        family = []
        for bit in (4, 3, 2):
            a = models[f"{norm}/{bit}bit_apot"]
            for other in ("uniform", "pot") if bit > 2 else ("uniform",):
                b = models[f"{norm}/{bit}bit_{other}"]
                n = a[test]["n"]
                ca, cb = correct_from_bits(a[test]["correct"], n), correct_from_bits(b[test]["correct"], n)
                only_a, only_b = int((ca & ~cb).sum()), int((cb & ~ca).sum())
                family.append({"test": test, "bit": bit, "a": "apot", "b": other, "n": n, "top1_a": a[test]["top1"],
                               "top1_b": b[test]["top1"], "only_a": only_a, "only_b": only_b,
                               "p": mcnemar_p(only_a, only_b), "interval": list(paired_interval(only_a, only_b, n))})
        for row, adjusted in zip(family, holm([r["p"] for r in family])):
            row["p_holm"] = adjusted
        rows += family
    return rows


def main() -> int:
    done = json.loads(OUT.read_text()) if OUT.is_file() else {}
    models, draws = done.get("models", {}), done.get("draws", {})
    sets = test_sets()
    train, _ = make_split()
    images = data.normalize(data.load_npz(train).sample(CALIB_IMAGES, seed=CALIB_SEED).x)
    full_precision = load_model("cifar10", "resnet20", 32, "release", log=lambda line: None)
    if "full_precision" not in done:
        done["full_precision"] = score_model(full_precision, sets)

    def save():
        out = {"calibration": {"images": CALIB_IMAGES, "seed": CALIB_SEED, "source": "train45k_jpeg.npz"},
               "full_precision": done["full_precision"], "models": models, "draws": draws}
        if all(f"{norm}/{bit}bit_{scheme}" in models for norm in WEIGHT_NORMS for bit, scheme in MODELS):
            mean = {norm: sum(models[f"{norm}/{bit}bit_{scheme}"]["holdout5k"]["top1"] for bit, scheme in MODELS)
                    / len(MODELS) for norm in WEIGHT_NORMS}
            out["mean_holdout_top1"] = mean
            out["chosen"] = max(WEIGHT_NORMS, key=mean.__getitem__)
            out["comparisons"] = {norm: scheme_comparisons(models, norm) for norm in WEIGHT_NORMS}
        tmp = OUT.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=1) + "\n")
        tmp.replace(OUT)

    for bit, scheme in MODELS:
        for norm in WEIGHT_NORMS:
            key = f"{norm}/{bit}bit_{scheme}"
            if key in models:
                continue
            model = post_training_quantize(full_precision, ModelSpec("cifar10", "resnet20", bit, scheme, weight_norm=norm),
                                           images, log=lambda line: None)
            models[key] = score_model(model, sets)
            print(f"{key}: " + ", ".join(f"{k} {v['top1']:.2f}" for k, v in models[key].items()), flush=True)
            save()
    def eight_bit(drawn: data.ImageArrays):
        """quantize's default 8-bit model, calibrated on ``drawn``."""
        return post_training_quantize(full_precision, ModelSpec("cifar10", "resnet20", 8, weight_norm=PTQ_WEIGHT_NORM),
                                      data.normalize(drawn.x), log=lambda line: None)

    for seed in DRAW_SEEDS:
        key = f"{PTQ_WEIGHT_NORM}/8bit_apot/seed{seed}"
        if key in draws:
            continue
        draws[key] = score_model(eight_bit(data.load_npz(train).sample(CALIB_IMAGES, seed=seed)), sets)
        print(f"{key}: " + ", ".join(f"{k} {v['top1']:.2f}" for k, v in draws[key].items()), flush=True)
        save()
    key = f"{PTQ_WEIGHT_NORM}/8bit_apot/quantize_default"
    if key not in draws:
        drawn = data.load_cifar10(data.reference_file("cifar10/jpeg_files.zip"), train=True, sample=CALIB_IMAGES, seed=0,
                                  progress=False)
        draws[key] = score_model(eight_bit(drawn), {name: sets[name] for name in TEST_SETS})
        print(f"{key}: " + ", ".join(f"{k} {v['top1']:.2f}" for k, v in draws[key].items()), flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
