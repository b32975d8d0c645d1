"""Draw the scheme comparison's figures from its files (``results.json`` and the runs' TensorBoard scalars) into
``figures/`` beside this script, and print the table they show.

    python checkpoints/scheme_comparison/figures.py

- ``accuracy_vs_bits.png``: top-1 on the exact first 1,000 and on the JPEG copy's 10,000 test images against the
  bitwidth, one line per scheme; beside each other scheme's point, a grey bar from it plus the 95 % paired
  interval of APoT − that scheme (where APoT's accuracy lies, by the paired images: APoT's point outside the bar
  would be a contradiction);
- ``alpha_trajectories.png``: the mean activation and weight α over the quantized layers, step by step, per
  scheme and bitwidth (each divided by its starting value, so that the schemes share an axis);
- ``frozen_alpha.png``: held-out top-1 per epoch of the 2-bit APoT run with α learned and with α frozen.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from apot_utils.files.tblogs import read_scalars  # noqa: E402

HERE = Path(__file__).resolve().parent
SCHEMES = {"apot": "APoT", "uniform": "uniform", "pot": "power-of-two"}
TESTS = {"exact1000": "exact first 1,000 test images", "jpeg10000": "JPEG copy, 10,000 test images"}


def scalars(run: str) -> dict[str, tuple[list[int], list[float]]]:
    events = sorted((HERE / run / "tensorboard").glob("events.*"))
    merged: dict[str, tuple[list[int], list[float]]] = {}
    for path in events:
        for tag, (steps, values) in read_scalars(path).items():
            merged.setdefault(tag, ([], []))
            merged[tag][0].extend(steps)
            merged[tag][1].extend(values)
    return merged


def accuracy_vs_bits(results: dict, out: Path) -> None:
    fig, axes = plt.subplots(1, len(TESTS), figsize=(11, 4))
    models, comparisons = results["models"], results["comparisons"]
    for ax, (test, title) in zip(axes, TESTS.items()):
        for scheme, label in SCHEMES.items():
            points = sorted((m["bit"], m[test]["top1"]) for name, m in models.items()
                            if m["scheme"] == scheme and "frozen" not in name)
            if points:
                ax.plot(*zip(*points), "o-", label=label)
        shown = False
        for c in comparisons:
            if c["test"] == test:                  # where APoT would lie: the other + the paired interval
                low, high = c["interval"]          # of APoT − other, in points
                offset = 0.06 if c["b"] == "uniform" else 0.12
                ax.errorbar(c["bit"] + offset, c["top1_b"] + (low + high) / 2, yerr=(high - low) / 2, fmt="none",
                            capsize=3, color="grey", label=None if shown else "other + 95 % paired interval of APoT − other")
                shown = True
        for name, m in results["release"].items():
            ax.plot(m["bit"], m[test]["top1"], "k*", label="released APoT" if name.endswith("2bit") else None)
        ax.set(title=title, xlabel="bits (weights and activations)", ylabel="top-1 (%)", xticks=[2, 3, 4])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_bits.png", dpi=120)


def alpha_trajectories(results: dict, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for name, m in results["models"].items():
        tags = scalars(name)
        for ax, kind in zip(axes, ("act", "weight")):
            series = [v for t, v in tags.items() if t.startswith(f"alpha/{kind}/")]
            if not series:
                continue
            steps = tags[next(t for t in tags if t.startswith(f"alpha/{kind}/"))][0]
            length = min(len(values) for _, values in series)
            mean = [sum(values[i] / values[0] for _, values in series) / len(series) for i in range(length)]
            ax.plot(steps[:length], mean, label=name.removesuffix("_seed0"))
    for ax, kind in zip(axes, ("activation", "weight")):
        ax.set(title=f"{kind} α, mean over layers of α / its start", xlabel="step", ylabel="α / α at step 0")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "alpha_trajectories.png", dpi=120)


def frozen_alpha(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for run, label in (("apot_2bit_seed0", "α learned (RCF)"), ("apot_2bit_frozen_alpha_seed0", "α frozen")):
        if (HERE / run / "tensorboard").is_dir():
            steps, values = scalars(run).get("acc1_val", ([], []))
            ax.plot(range(1, len(values) + 1), values, "o-", label=label)
    ax.set(title="2-bit APoT ResNet-20: what learning α buys", xlabel="epoch", ylabel="held-out top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frozen_alpha.png", dpi=120)


def main() -> None:
    results = json.loads((HERE / "results.json").read_text())
    out = HERE / "figures"
    out.mkdir(exist_ok=True)
    accuracy_vs_bits(results, out)
    alpha_trajectories(results, out)
    frozen_alpha(out)
    print(f"{'model':32s} {'epoch':>5s} {'held-out':>9s} {'exact 1,000':>12s} {'JPEG 10,000':>12s}")
    for name, m in {**results["models"], **results["release"]}.items():
        print(f"{name:32s} {m.get('epoch', '-')!s:>5s} {m.get('holdout5k', {}).get('top1', float('nan')):9.2f} "
              f"{m['exact1000']['top1']:12.1f} {m['jpeg10000']['top1']:12.2f}")
    for c in results["comparisons"]:
        print(f"{c['test']:10s} {c['bit']}-bit APoT − {c['b']:8s}: {c['top1_a'] - c['top1_b']:+6.2f} points "
              f"[{c['interval'][0]:+.2f}, {c['interval'][1]:+.2f}], only APoT {c['only_a']}, only {c['b']} {c['only_b']}, "
              f"McNemar p {c['p']:.3f}, Holm {c['p_holm']:.3f}")
    if results["runs_missing"]:
        print("not trained yet:", ", ".join(results["runs_missing"]))


if __name__ == "__main__":
    main()
