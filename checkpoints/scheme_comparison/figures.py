"""Draw the scheme comparison's figures from its files (``results.json``, the runs' TensorBoard scalars and
``ptq_ablation.json``) into ``figures/`` beside this script, and print the tables they show.

    python checkpoints/scheme_comparison/figures.py

- ``accuracy_vs_bits.png``: the trained models' top-1 on the exact first 1,000 and on the JPEG copy's 10,000 test
  images against the bitwidth, one line per scheme (through the mean over seeds); beside each other scheme's point,
  a grey bar from it plus the 95 % paired interval of APoT − that scheme (where the paired images place APoT);
- ``alpha_trajectories.png``: the mean activation and weight α over the quantized layers, step by step, per run
  (each divided by its starting value, so that the runs share an axis);
- ``frozen_alpha.png``: held-out top-1 per epoch of the 2-bit APoT run with α learned and with α frozen;
- ``ptq_accuracy_vs_bits.png``: the same figure for post-training quantization under the weight normalization
  chosen on the held-out images (``ptq_ablation.json``).

The drawing is :mod:`apot_utils.notebook.comparison`'s, which the chapter uses too.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from apot_utils.notebook import comparison  # noqa: E402

HERE = Path(__file__).resolve().parent


def print_tables(results: dict) -> None:
    print(f"{'model':32s} {'epoch':>5s} {'held-out':>9s} {'exact 1,000':>12s} {'JPEG 10,000':>12s}")
    for name, m in {**results["models"], **results["release"]}.items():
        print(f"{name:32s} {m.get('epoch', '-')!s:>5s} {m.get('holdout5k', {}).get('top1', float('nan')):9.2f} "
              f"{m['exact1000']['top1']:12.1f} {m['jpeg10000']['top1']:12.2f}")
    for title, rows in (("schemes (Holm within each test set)", results["comparisons"]),
                        ("run-to-run variation (untested yardsticks)", results["replicates"]),
                        ("what learning α buys at 2 bits", results["rcf"])):
        print(f"\n{title}:")
        for c in rows:
            a = c["a"] if "bit" not in c else f"{c['bit']}-bit seed {c['seed']} APoT"
            holm = f", Holm {c['p_holm']:.3f}" if "p_holm" in c else ""
            print(f"  {c['test']:10s} {a} − {c['b']}: {c['top1_a'] - c['top1_b']:+6.2f} points "
                  f"[{c['interval'][0]:+.2f}, {c['interval'][1]:+.2f}], only first {c['only_a']}, only second "
                  f"{c['only_b']}, McNemar p {c['p']:.3f}{holm}")
    if results["runs_missing"]:
        print("\nnot trained yet:", ", ".join(results["runs_missing"]))


def main() -> None:
    out = HERE / "figures"
    out.mkdir(exist_ok=True)
    results = comparison.read_results("results.json", HERE)
    comparison.accuracy_vs_bits(results, results["release"], "Trained from the released full-precision model, "
                                "one recipe for all").savefig(out / "accuracy_vs_bits.png", dpi=120)
    runs = {name.removesuffix("_seed0"): comparison.run_scalars(name, HERE) for name in results["models"]}
    comparison.alpha_trajectories(runs).savefig(out / "alpha_trajectories.png", dpi=120)
    comparison.held_out_curves({"α learned (RCF)": runs["apot_2bit"], "α frozen": runs["apot_2bit_frozen_alpha"]},
                               "2-bit APoT ResNet-20: what learning α buys").savefig(out / "frozen_alpha.png", dpi=120)
    print_tables(results)
    if (HERE / "ptq_ablation.json").is_file():
        ablation = comparison.read_results("ptq_ablation.json", HERE)
        if "chosen" in ablation:
            comparison.accuracy_vs_bits(comparison.ablation_as_results(ablation, ablation["chosen"]), None,
                                        f"Post-training, weight normalization {ablation['chosen']}"
                                        ).savefig(out / "ptq_accuracy_vs_bits.png", dpi=120)


if __name__ == "__main__":
    main()
