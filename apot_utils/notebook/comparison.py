"""The scheme comparison's files (``checkpoints/scheme_comparison/``: ``results.json``, the runs' TensorBoard
scalars, ``ptq_ablation.json``) read and drawn, for its ``figures.py`` and the chapter that answers "does APoT beat
uniform?". Each drawing function returns the matplotlib Figure it drew."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..files.paths import SHIPPED_DIR
from ..files.tblogs import read_scalars

COMPARISON_DIR = SHIPPED_DIR / "scheme_comparison"
SCHEMES = {"apot": "APoT", "uniform": "uniform", "pot": "power-of-two"}
TESTS = {"exact1000": "exact first 1,000 test images", "jpeg10000": "JPEG copy, 10,000 test images"}


def read_results(name: str = "results.json", folder: Path = COMPARISON_DIR) -> dict:
    """One of the comparison's JSON files (``results.json``, ``ptq_ablation.json``), as written."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the script beside it that writes it "
                                "(checkpoints/README.md, section scheme_comparison/)")
    return json.loads(path.read_text())


def run_scalars(run: str, folder: Path = COMPARISON_DIR) -> dict[str, tuple[list[int], list[float]]]:
    """tag -> (steps, values) of one run's TensorBoard scalars, its event files (a resumed run has several) merged."""
    merged: dict[str, tuple[list[int], list[float]]] = {}
    for path in sorted((Path(folder) / run / "tensorboard").glob("events.*")):
        for tag, (steps, values) in read_scalars(path).items():
            merged.setdefault(tag, ([], []))
            merged[tag][0].extend(steps)
            merged[tag][1].extend(values)
    return merged


def by_scheme(models: dict[str, dict], test: str) -> dict[str, dict[int, list[float]]]:
    """scheme -> bit -> top-1 (%) on ``test`` of every seed, the frozen-α run left out."""
    out: dict[str, dict[int, list[float]]] = {}
    for name, m in models.items():
        if "frozen" not in name:
            out.setdefault(m["scheme"], {}).setdefault(m["bit"], []).append(m[test]["top1"])
    return out


def accuracy_vs_bits(results: dict, release: dict | None = None, title: str = ""):
    """Top-1 against the bitwidth on each test set, one line per scheme through the mean over seeds (each seed a dot);
    beside each point of uniform and power-of-two, a grey bar: that scheme's accuracy plus the 95 % paired interval
    of APoT − it (where the paired images place APoT; seed 0). ``release``: name -> scored model, drawn as stars.
    Works for trained models (``results.json``) and post-training ones (``ptq_ablation.json``'s, regrouped)."""
    fig, axes = plt.subplots(1, len(TESTS), figsize=(11, 4.2))
    for ax, (test, subtitle) in zip(axes, TESTS.items()):
        for scheme, label in SCHEMES.items():
            bits = by_scheme(results["models"], test).get(scheme, {})
            if bits:
                xs = sorted(bits)
                line, = ax.plot(xs, [np.mean(bits[b]) for b in xs], "o-", label=label)
                for b in xs:
                    if len(bits[b]) > 1:
                        ax.plot([b] * len(bits[b]), bits[b], ".", color=line.get_color(), alpha=0.6)
        shown = False
        for c in results["comparisons"]:
            if c["test"] == test and c.get("seed", 0) == 0:
                low, high = c["interval"]
                x = c["bit"] + (0.06 if c["b"] == "uniform" else 0.12)
                ax.errorbar(x, c["top1_b"] + (low + high) / 2, yerr=(high - low) / 2, fmt="none", capsize=3, color="grey",
                            label=None if shown else "other + 95 % paired interval of APoT − other")
                shown = True
        for name, m in (release or {}).items():
            ax.plot(m["bit"], m[test]["top1"], "k*", label="released APoT" if name.endswith("2bit") else None)
        bits = {m["bit"] for m in results["models"].values()} | {m["bit"] for m in (release or {}).values()}
        ax.set(title=subtitle, xlabel="bits (weights and activations)", ylabel="top-1 (%)", xticks=sorted(bits))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def mean_alpha(scalars: dict, kind: str) -> tuple[list[int], list[float]]:
    """(steps, mean over the quantized layers of α / its first value) for ``kind`` 'act' or 'weight'."""
    series = [values for tag, (_, values) in scalars.items() if tag.startswith(f"alpha/{kind}/")]
    if not series:
        return [], []
    steps = next(s for tag, (s, _) in scalars.items() if tag.startswith(f"alpha/{kind}/"))
    length = min(len(v) for v in series)
    return steps[:length], [sum(v[i] / v[0] for v in series) / len(series) for i in range(length)]


def alpha_trajectories(runs: dict[str, dict]):
    """runs: label -> TensorBoard scalars (:func:`run_scalars`). Two panels: activation and weight α, each the mean
    over the quantized layers of α divided by its starting value, against the training step; a run's other seeds
    (labels ending ``_seed1``, ...) in its colour, dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors, run_color = plt.rcParams["axes.prop_cycle"].by_key()["color"], {}
    for label, scalars in runs.items():
        run = label.split("_seed")[0]          # another seed of a run: its colour, dashed
        color = run_color.setdefault(run, colors[len(run_color) % len(colors)])
        for ax, kind in zip(axes, ("act", "weight")):
            steps, values = mean_alpha(scalars, kind)
            if steps:
                ax.plot(steps, values, label=label, color=color, ls="--" if "_seed" in label and not label.endswith("seed0") else "-")
    for ax, kind in zip(axes, ("activation", "weight")):
        ax.set(title=f"{kind} α: mean over layers of α / its start", xlabel="step", ylabel="α / α at step 0")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def held_out_curves(runs: dict[str, dict], title: str):
    """runs: label -> TensorBoard scalars. Held-out top-1 (``acc1_val``: at the start, then after each epoch), one
    line a run."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, scalars in runs.items():
        _, values = scalars.get("acc1_val", ([], []))
        ax.plot(range(len(values)), values, "o-", label=label)
    ax.set(title=title, xlabel="epochs trained (0: the post-training start)", ylabel="held-out top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def ablation_as_results(ablation: dict, norm: str) -> dict:
    """``ptq_ablation.json``'s models under one weight normalization, in ``results.json``'s shape (models with
    bit and scheme; the comparisons at that normalization), for :func:`accuracy_vs_bits`."""
    models = {}
    for key, m in ablation["models"].items():
        key_norm, _, model = key.partition("/")
        bit, _, scheme = model.partition("bit_")
        if key_norm == norm:
            models[model] = {**m, "bit": int(bit), "scheme": scheme}
    return {"models": models, "comparisons": ablation.get("comparisons", {}).get(norm, [])}


def judged(results: dict) -> list[dict]:
    """Every scheme comparison of ``results`` with the rule chapter 05b and the README apply: ``passes`` when its
    Holm-corrected p (within its test set's planned family) is below 0.05 and the difference is larger than every
    run-to-run difference measured on that test set (``results["replicates"]``); ``shown`` when it passes and is
    replicated, that is when the same bitwidth and pair of schemes has at least two seeds and every seed's comparison
    on that test set passes in the same direction. Each record: the comparison's fields, ``gap`` (points, APoT minus
    the other), ``yardstick`` (the largest run-to-run difference, or None), ``seeds``, ``passes``, ``shown``."""
    yardstick = {test: max((abs(r["top1_a"] - r["top1_b"]) for r in results["replicates"] if r["test"] == test),
                           default=None) for test in TESTS}
    out = []
    for c in results["comparisons"]:
        gap = c["top1_a"] - c["top1_b"]
        out.append({**c, "gap": gap, "yardstick": yardstick[c["test"]],
                    "passes": c["p_holm"] < 0.05 and yardstick[c["test"]] is not None and abs(gap) > yardstick[c["test"]]})
    for record in out:
        cell = [r for r in out if (r["bit"], r["b"], r["test"]) == (record["bit"], record["b"], record["test"])]
        record["seeds"] = len({r.get("seed", 0) for r in cell})
        record["shown"] = record["seeds"] >= 2 and all(r["passes"] and r["gap"] * record["gap"] > 0 for r in cell)
    return out
