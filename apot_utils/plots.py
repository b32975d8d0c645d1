"""Figures the notebooks show. Each function returns the matplotlib Figure it drew."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from .layers import quantized_layers


def alphas_by_layer(alpha_rows: dict[int, list[tuple[str, float, float]]]):
    """alpha_rows: bit -> [(layer, weight α, act α)] in module order. Two panels, layers on x."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharex=True)
    for bit, rows in sorted(alpha_rows.items()):
        x = np.arange(len(rows))
        axes[0].plot(x, [r[1] for r in rows], "o-", label=f"{bit}-bit")
        axes[1].plot(x, [r[2] for r in rows], "o-", label=f"{bit}-bit")
    names = [r[0] for r in next(iter(alpha_rows.values()))]
    for ax, title, unit in ((axes[0], "weight α", "normalized-weight units (σ)"),
                            (axes[1], "activation α", "activation units")):
        ax.set_title(f"Clipping threshold: {title}")
        ax.set_ylabel(f"α ({unit})")
        ax.set_xticks(np.arange(len(names)), names, rotation=90, fontsize=7)
        ax.set_xlabel("quantized layer (module order)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def accuracy_vs_bits(ours: dict[int, float], ours_label: str, published: dict[int, float],
                     published_label: str):
    """Top-1 (%) per bitwidth, ours beside the published numbers; 32 = full precision."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bits = sorted(set(ours) | set(published))
    pos = {b: i for i, b in enumerate(bits)}
    for values, label, offset in ((published, published_label, -0.18), (ours, ours_label, 0.18)):
        xs = [pos[b] + offset for b in sorted(values)]
        bars = ax.bar(xs, [values[b] for b in sorted(values)], width=0.36, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(bits)), [("FP" if b == 32 else f"{b}-bit") for b in bits])
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(min(min(ours.values()), min(published.values())) - 8, 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("CIFAR-10 ResNet-20: accuracy against bitwidth")
    fig.tight_layout()
    return fig


def weight_histograms(model: torch.nn.Module, names: list[str]):
    """Histograms of the named layers' weights with their quantization levels (α · levels,
    mapped back to weight units through the layer's mean and std)."""
    layers = dict(quantized_layers(model))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5))
    for ax, name in zip(np.atleast_1d(axes), names):
        layer = layers[name]
        w = layer.weight.detach().flatten()
        mags = layer.weight_levels
        levels = torch.cat([-mags[1:].flip(0), mags]) * layer.weight_alpha.detach() * w.std() + w.mean()
        ax.hist(w.numpy(), bins=80, color="0.6", label="weights")
        for v in levels.tolist():
            ax.axvline(v, color="tab:red", lw=0.8, alpha=0.8)
        ax.plot([], [], color="tab:red", label=f"{layer.bit}-bit levels")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def per_class_accuracy(results: dict[str, tuple[torch.Tensor, torch.Tensor]], classes):
    """results: label -> (predictions [N], targets [N]). Grouped bars per class (%)."""
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(results)
    for i, (label, (pred, target)) in enumerate(results.items()):
        acc = [100.0 * float((pred[target == c] == c).float().mean()) for c in range(len(classes))]
        ax.bar(np.arange(len(classes)) + (i - (len(results) - 1) / 2) * width, acc, width, label=label)
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_ylabel("per-class accuracy (%)")
    ax.set_ylim(50, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves(series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, ylabel: str, ax=None):
    """Line plot of label -> (x, y)."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig or ax.figure


def release_curves(logs: dict, tag: str, title: str, ylabel: str):
    """One panel per architecture: scalar ``tag`` of the released runs per epoch, a line per bitwidth.
    logs: (arch, bit) -> scalars, as :func:`apot_utils.tblogs.release_logs` returns."""
    archs = sorted({arch for arch, _ in logs})
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4), sharey=True)
    for ax, arch in zip(np.atleast_1d(axes), archs):
        series = {f"{bit}-bit": ([step / 1000 for step in logs[(arch, bit)][tag][0]], logs[(arch, bit)][tag][1])
                  for a, bit in sorted(logs) if a == arch}   # the logs count 1000 steps an epoch
        curves(series, f"{arch}: {title}", "epoch", ylabel, ax=ax)
    fig.tight_layout()
    return fig


def best_vs_bits(best: dict[str, dict[int, float]]):
    """best: arch -> {bit: best validation top-1 (%)}, one line per architecture."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for (arch, values), marker in zip(sorted(best.items()), "os^v"):
        bits = sorted(values)
        ax.plot(bits, [values[b] for b in bits], marker + "-", label=f"{arch} (released logs, best epoch)")
    ax.set_xticks(sorted({b for v in best.values() for b in v}))
    ax.set_xlabel("bitwidth (weights and activations)")
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.set_title("Final top-1 against bitwidth")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
