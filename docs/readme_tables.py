"""The README's results tables, computed from the files that hold the measurements, written between the
``<!-- results-table -->`` and ``<!-- /results-table -->`` markers of README.md.

    python docs/readme_tables.py          # rewrite the block
    python docs/readme_tables.py --check  # exit 1 if the README's block is not what the files give

Sources: ``checkpoints/scheme_comparison/results.json`` (the trained comparison and the released models, scored by
``results.py``) and ``ptq_ablation.json`` (post-training quantization, ``ptq_ablation.py``). ``tests/test_readme.py``
runs the check, so that no number in the table is typed by hand.
"""
from __future__ import annotations

import json
import statistics
import sys
import textwrap
from pathlib import Path

from apot_utils.notebook.comparison import judged

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "checkpoints" / "scheme_comparison"
START, END = "<!-- results-table -->", "<!-- /results-table -->"
SCHEMES = (("apot", "APoT"), ("uniform", "uniform"), ("pot", "power-of-two"))


def _cell(values: list[dict]) -> str:
    """exact-1,000 top-1 (JPEG-10,000 top-1), means over seeds; '–' where there is no model."""
    if not values:
        return "–"
    exact = statistics.mean(v["exact1000"]["top1"] for v in values)
    jpeg = statistics.mean(v["jpeg10000"]["top1"] for v in values)
    seeds = f" ×{len(values)}" if len(values) > 1 else ""
    return f"{exact:.1f} ({jpeg:.1f}){seeds}"


def tables() -> str:
    results = json.loads((FOLDER / "results.json").read_text())
    ablation = json.loads((FOLDER / "ptq_ablation.json").read_text())
    norm, terms = ablation["chosen"], ablation["chosen_terms_8bit"]
    seed = ablation["calibration"]["seed"]
    seeds = sorted({int(key.rpartition("seed")[2]) for key in ablation["terms"] if key.startswith(f"{terms}terms/seed")})
    two_seeds = any(name.endswith("seed1") for name in results["models"])
    fp = ablation["full_precision"]
    drop = fp["exact1000"]["top1"] - fp["jpeg10000"]["top1"]
    lines = ["Top-1 (%) of CIFAR-10 ResNet-20 on the exact (lossless) first 1,000 CIFAR-10 test images (10 images a point; in\n"
             "brackets: the "
             f"non-public JPEG copy's 10,000, {drop:.1f} points lower for the full-precision model"
             + ("; ×2: the mean of two seeds)." if two_seeds else ")."),
             "",
             "| bits | the authors' release (300 epochs) | this project, 8-epoch fine-tune: APoT | uniform | power-of-two "
             "| post-training: APoT / uniform / power-of-two |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| 32 | {fp['exact1000']['top1']:.1f} ({fp['jpeg10000']['top1']:.1f}) | | | | |"]
    for bit in (8, 4, 3, 2):
        release = results["release"].get(f"release_{bit}bit")
        trained = [_cell([m for name, m in results["models"].items() if m["bit"] == bit and m["scheme"] == scheme
                          and "frozen" not in name]) if bit != 8 else "" for scheme, _ in SCHEMES]
        post = " / ".join(_cell([ablation["models"][key]]) for scheme, _ in SCHEMES
                          if (key := f"{norm}/{bit}bit_{scheme}") in ablation["models"])
        if bit == 8:                # quantize's 8-bit default: APoT with the number of terms chosen on held-out images
            post = f"APoT, n = {terms}: " + _cell([ablation["terms"][f"{terms}terms/seed{seed}"]])
        lines.append(f"| {bit} | {_cell([release]) if release else ''} | {' | '.join(trained)} | {post} |")
    notes = (f"{verdict(results)} Trained: each from the released full-precision model, one recipe for all (8 epochs of the "
             f"JPEG training images, distillation, α learned), the epoch chosen on held-out training images; at 2 bits "
             f"every scheme's weights are ternary and power-of-two's levels are APoT's, so at 2 bits APoT against uniform "
             f"compares activation sets and power-of-two is another run of APoT's sets. Post-training: "
             f"weight normalization `{norm}`, 512 calibration images. Paired tests, run-to-run yardsticks and figures: "
             "chapter 05b and `checkpoints/scheme_comparison/`.")
    chosen = [ablation["terms"][f"{terms}terms/seed{s}"]["exact1000"]["top1"] for s in seeds]
    release_rule = [ablation["models"][f"{norm}/8bit_apot"]["exact1000"]["top1"]] + [
        m["exact1000"]["top1"] for key, m in ablation["draws"].items() if key.startswith(f"{norm}/8bit_apot/seed")]
    notes += (f" 8-bit post-training APoT with n = {terms} terms (chosen on held-out training images by agreement with the "
              f"full-precision model's predictions), over {len(chosen)} draws of 512 calibration images: "
              + (f"{chosen[0]:.1f} on each" if min(chosen) == max(chosen) else f"{min(chosen):.1f} to {max(chosen):.1f}")
              + " on the exact 1,000, and "
              f"{ablation['terms'][f'{terms}terms/quantize_default']['exact1000']['top1']:.1f} on the draw `quantize --bit 8` "
              f"itself takes; with the release's rule, n = 4: {min(release_rule):.1f} to {max(release_rule):.1f}, and "
              f"{ablation['draws'][f'{norm}/8bit_apot/quantize_default']['exact1000']['top1']:.1f}.")
    if results.get("runs_missing"):
        notes += f" Not finished when the table was made: {', '.join(results['runs_missing'])}."
    return "\n".join(lines[:1] + [""] + lines[2:] + [""] + textwrap.wrap(notes, 115, break_on_hyphens=False))


def verdict(results: dict) -> str:
    """One paragraph: what the paired tests show under chapter 05b's rule (:func:`apot_utils.notebook.comparison.judged`:
    Holm p < 0.05, beyond every run-to-run difference, replicated over seeds), and what passes on one seed only."""
    names = {"exact1000": "the exact 1,000", "jpeg10000": "the JPEG 10,000"}
    judgements = judged(results)
    shown = [c for c in judgements if c["shown"]]
    single = [c for c in judgements if c["passes"] and not c["shown"]]

    other = {"uniform": "uniform", "pot": "power-of-two"}

    def said(c):
        return (f"{'ahead of' if c['gap'] > 0 else 'behind'} {other[c['b']]} at {c['bit']} bits on {names[c['test']]} "
                f"({c['gap']:+.1f} points, Holm p {c['p_holm']:.3f})")

    def passing(c):           # a pass on one seed: say how the cell's other seeds fared, or that it has no other
        rest = [r for r in judgements if (r["bit"], r["b"], r["test"]) == (c["bit"], c["b"], c["test"]) and r is not c]
        if not rest:
            return said(c) + ", one seed run"
        return (said(c)[:-1] + f", seed {c.get('seed', 0)}), not with "
                + ", ".join(f"seed {r.get('seed', 0)} ({r['gap']:+.1f} points, Holm p {r['p_holm']:.3f})" for r in rest))
    text = ("Shown by the paired tests, beyond every run-to-run difference and over two or more seeds (chapter 05b): APoT "
            + "; ".join(map(said, shown)) + ".") if shown else (
        "The paired tests show no difference between APoT and another scheme that is replicated over seeds (chapter 05b's rule).")
    if single:
        seeds = [r for r in results["replicates"] if r["why"] == "another seed"]
        widest = max(seeds, key=lambda r: abs(r["top1_a"] - r["top1_b"]), default=None)
        text += (" Passing with one seed only: APoT " + "; ".join(map(passing, single))
                 + f"; neither holds on {names['jpeg10000']}" * all(c["test"] == "exact1000" for c in single) + ".")
        if widest is not None:
            text += (f" The same recipe run with another seed moved the {widest['a'].split('_')[1].replace('bit', '-bit')} "
                     f"{widest['a'].split('_')[0]} model by {abs(widest['top1_a'] - widest['top1_b']):.1f} points on "
                     f"{names[widest['test']]} (McNemar p {widest['p']:.2f}).")
    return text


def block(readme: str) -> tuple[int, int]:
    start, end = readme.index(START) + len(START), readme.index(END)
    return start, end


def main() -> int:
    readme = (ROOT / "README.md").read_text()
    start, end = block(readme)
    new = readme[:start] + "\n" + tables() + "\n" + readme[end:]
    if "--check" in sys.argv:
        if new != readme:
            print("README.md's results table is not what the files give: run python docs/readme_tables.py")
            return 1
        return 0
    (ROOT / "README.md").write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
