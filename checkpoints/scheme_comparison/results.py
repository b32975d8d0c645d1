"""Score every finished run of the scheme comparison and write ``results.json`` beside this script.

    APOT_DATA_DIR=... python checkpoints/scheme_comparison/results.py [--rescore]

For each finished run (all its epochs done) the ``model_best.pth.tar`` (the epoch chosen on the 5,000 held-out
training images, never on a test image), and for the authors' released 2/3/4-bit models as a reference: top-1 on the
held-out images, on the exact first 1,000 test images and on the JPEG copy's 10,000 test images, and which test
images each gets right (hex bit strings, so that paired tests can be recomputed from the file). Then, for every
bitwidth, seed and test set, APoT against uniform and against power-of-two: the discordant counts, McNemar's exact
p, Holm's correction over all the comparisons of that test set, and a 95 % interval of the paired difference
(:func:`comparisons`; at 2 bits APoT's level sets are power-of-two's, so that pair is no comparison of schemes). Beside
them, untested, the pairs that measure run-to-run variation (:func:`replicates`), and learned against frozen α at 2
bits (:func:`what_rcf_buys`).

``tests/test_scheme_comparison.py`` re-validates every model against this file; ``figures.py`` draws from it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from apot_utils.fakequant.evaluate import validate_cifar10
from apot_utils.fakequant.loading import load_model
from apot_utils.files import data
from apot_utils.notebook.stats import holm, mcnemar_p, paired_interval

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import RUNS, finished, make_split  # noqa: E402  (this folder's runner: the run names and the split)

TEST_SETS = ("exact1000", "jpeg10000")


def test_sets() -> dict[str, data.ImageArrays]:
    """The held-out selection images and the two test sets, by name."""
    _, holdout = make_split()
    return {"holdout5k": data.load_npz(holdout),
            "exact1000": data.load_npz(data.reference_file("cifar10/test_first1000_lossless.npz")),
            "jpeg10000": data.load_npz(data.reference_file("cifar10/test_jpeg.npz"))}


def correct_bits(correct: torch.Tensor) -> str:
    """A [N] bool tensor as hex, image 0 in the top bit of the first digit (N padded to a multiple of 4)."""
    bits = "".join("1" if c else "0" for c in correct.tolist())
    bits += "0" * (-len(bits) % 4)
    return "".join(f"{int(bits[i:i + 4], 2):x}" for i in range(0, len(bits), 4))


def correct_from_bits(text: str, n: int) -> torch.Tensor:
    """The inverse of :func:`correct_bits`: [n] bool."""
    bits = "".join(f"{int(h, 16):04b}" for h in text)
    return torch.tensor([b == "1" for b in bits[:n]])


def score(path, sets: dict[str, data.ImageArrays]) -> dict:
    """:func:`score_model` of the model in the file at ``path``, with its bit and scheme."""
    model = load_model("cifar10", "resnet20", None, path, log=lambda line: None)
    return {"bit": model.spec.bit, "scheme": model.spec.scheme} | score_model(model, sets)


def score_model(model, sets: dict[str, data.ImageArrays]) -> dict:
    """Top-1 and image count of ``model`` on each set, and on the test sets which images it gets right."""
    row = {}
    for name, images in sets.items():
        result = validate_cifar10(model, images, "cpu", log=lambda line: None)
        correct = result.predictions == result.targets
        row[name] = {"top1": result.top1, "n": len(correct)}
        if name in TEST_SETS:
            row[name]["correct"] = correct_bits(correct)
    return row


def paired(first: dict, second: dict, test: str, **labels) -> dict:
    """The paired record of two scored models on one test set (``labels`` name them, as ``a`` and ``b``): top-1 of
    each, the images only one gets right, McNemar's exact p and the 95 % interval of a − b (points)."""
    n = first[test]["n"]
    ca, cb = correct_from_bits(first[test]["correct"], n), correct_from_bits(second[test]["correct"], n)
    only_a, only_b = int((ca & ~cb).sum()), int((cb & ~ca).sum())
    return {"test": test, **labels, "n": n, "top1_a": first[test]["top1"], "top1_b": second[test]["top1"], "only_a": only_a,
            "only_b": only_b, "p": mcnemar_p(only_a, only_b), "interval": list(paired_interval(only_a, only_b, n))}


def same_levels(bit: int, scheme: str, other: str) -> bool:
    """Whether two schemes quantize with the same level sets at ``bit`` (2 bits: APoT's are power-of-two's)."""
    from apot_utils.core.levels import level_set, weight_magnitudes

    return all(torch.equal(f(bit, scheme), f(bit, other)) for f in (level_set, weight_magnitudes))


def planned_comparisons() -> list[tuple[int, int, str]]:
    """(bit, seed, other scheme) of every APoT comparison the runs of ``run.py`` make possible: the family Holm's
    correction is over, whether or not every run has finished. (2-bit APoT against power-of-two is not one: the
    same level sets.)"""
    return [(bit, seed, other) for bit in (2, 3, 4) for seed in (0, 1) for other in ("uniform", "pot")
            if f"apot_{bit}bit_seed{seed}" in RUNS and f"{other}_{bit}bit_seed{seed}" in RUNS
            and not same_levels(bit, "apot", other)]


def comparisons(models: dict[str, dict]) -> list[dict]:
    """APoT against uniform and against PoT at every bitwidth and seed with both runs present, per test set, Holm-
    adjusted within each test set over the whole planned family (:func:`planned_comparisons`): a comparison whose runs
    have not finished counts with p = 1, so that an early result is not corrected for fewer tests than will be
    made. ``family`` records the family's size."""
    planned = planned_comparisons()
    rows = []
    for test in TEST_SETS:
        family = []
        for bit, seed, other in planned:
            a, b = models.get(f"apot_{bit}bit_seed{seed}"), models.get(f"{other}_{bit}bit_seed{seed}")
            family.append(None if a is None or b is None else
                          paired(a, b, test, bit=bit, seed=seed, a="apot", b=other, family=len(planned)))
        adjusted = holm([1.0 if r is None else r["p"] for r in family])
        for row, p_holm in zip(family, adjusted):
            if row is not None:
                rows.append(row | {"p_holm": p_holm})
    return rows


def replicates(models: dict[str, dict]) -> list[dict]:
    """Pairs that differ in nothing the comparison varies, so what separates them is run-to-run variation: the same
    level sets under two scheme names (2-bit APoT and power-of-two, seed 0: the same sets and seed; only an input
    exactly halfway between two levels can go another way, APoT's tie order being the release's), and the same run
    with another seed. Not tested: the size of their differences is the
    yardstick for the schemes' differences."""
    pairs = [("apot_2bit_seed0", "pot_2bit_seed0", "same level sets")]
    pairs += [(f"{s}_{bit}bit_seed0", f"{s}_{bit}bit_seed1", "another seed") for bit in (2, 3, 4) for s in ("apot", "uniform", "pot")]
    return [paired(models[a], models[b], test, a=a, b=b, why=why)
            for test in TEST_SETS for a, b, why in pairs if a in models and b in models]


def what_rcf_buys(models: dict[str, dict]) -> list[dict]:
    """The 2-bit APoT run with α learned (RCF) against the same run with both α rates 0, on each test set, Holm over
    the two test sets (the exact 1,000 are the lossless versions of 1,000 of the JPEG 10,000: not independent)."""
    a, b = models.get("apot_2bit_seed0"), models.get("apot_2bit_frozen_alpha_seed0")
    if a is None or b is None:
        return []
    rows = [paired(a, b, test, a="alpha learned", b="alpha frozen") for test in TEST_SETS]
    return [row | {"p_holm": p} for row, p in zip(rows, holm([r["p"] for r in rows]))]


def main() -> int:
    """Score what is new (``--rescore``: everything); a model whose file has the sha256 results.json recorded for it
    keeps its record (tests/test_scheme_comparison.py re-validates every model against the file anyway)."""
    from apot_utils.files.downloads import sha256_of

    old = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").is_file() else {}
    keep = "--rescore" not in sys.argv
    sets = None
    models = {}

    def scored(path, record):
        nonlocal sets
        digest = sha256_of(path)
        if keep and record is not None and record.get("sha256") == digest:
            return record
        sets = sets or test_sets()
        return score(path, sets) | {"sha256": digest}

    for name in RUNS:
        best = HERE / name / "model_best.pth.tar"
        if best.is_file() and finished(HERE / name):      # a run still training would change its best model
            models[name] = scored(best, old.get("models", {}).get(name)) | \
                {"epoch": torch.load(best, weights_only=True)["meta"]["epoch"]}
            print(f"{name}: " + ", ".join(f"{k} {v['top1']:.2f}" for k, v in models[name].items() if isinstance(v, dict)),
                  flush=True)
    release = {f"release_{bit}bit": scored(data.reference_file(f"checkpoints/cifar10/res20_{bit}bit.pth.tar"),
                                           old.get("release", {}).get(f"release_{bit}bit")) for bit in (2, 3, 4)}
    out = {"models": models, "release": release, "comparisons": comparisons(models), "replicates": replicates(models),
           "rcf": what_rcf_buys(models), "runs_missing": [name for name in RUNS if name not in models]}  # not finished
    tmp = HERE / "results.json.tmp"
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(HERE / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
