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
    fp = ablation["full_precision"]
    norm = ablation.get("chosen", "mean_std")
    lines = ["Top-1 (%) of CIFAR-10 ResNet-20 on the exact first 1,000 test images (in brackets: the JPEG copy's\n"
             "10,000; ×2: the mean of two seeds).", "",
             "| bits | released APoT (authors, 300 epochs) | APoT | uniform | power-of-two | post-training APoT / uniform / power-of-two |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| 32 | {fp['exact1000']['top1']:.1f} ({fp['jpeg10000']['top1']:.1f}) | | | | |"]
    for bit in (8, 4, 3, 2):
        release = results["release"].get(f"release_{bit}bit")
        trained = [_cell([m for name, m in results["models"].items() if m["bit"] == bit and m["scheme"] == scheme
                          and "frozen" not in name]) if bit != 8 else "" for scheme, _ in SCHEMES]
        post = ("APoT " if bit == 8 else "") + " / ".join(_cell([ablation["models"][key]]) for scheme, _ in SCHEMES
                          if (key := f"{norm}/{bit}bit_{scheme}") in ablation["models"])
        lines.append(f"| {bit} | {_cell([release]) if release else ''} | {' | '.join(trained)} | {post} |")
    notes = (f"Trained: each from the released full-precision model, one recipe for all (8 epochs, distillation, α learned), "
             f"the epoch chosen on held-out training images; at 2 bits power-of-two's levels are APoT's. Post-training: "
             f"weight normalization `{norm}`, 512 calibration images. Paired tests, run-to-run yardsticks and figures: "
             "chapter 05b and `checkpoints/scheme_comparison/`.")
    if results.get("runs_missing"):
        notes += f" Not finished when the table was made: {', '.join(results['runs_missing'])}."
    return "\n".join(lines[:1] + [""] + lines[2:] + [""] + textwrap.wrap(notes, 115, break_on_hyphens=False))


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
