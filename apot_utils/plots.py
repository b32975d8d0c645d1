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


SCHEME_NAMES = {"uniform": "uniform", "pot": "power-of-two (PoT)", "apot": "additive PoT (APoT)"}
SCHEME_COLORS = {"uniform": "tab:blue", "pot": "tab:orange", "apot": "tab:green"}


def level_number_lines(bits=range(2, 7), schemes=("uniform", "pot", "apot")):
    """The unsigned b-bit level sets at α = 1, one panel per scheme, one number line per bitwidth."""
    from .levels import level_set

    fig, axes = plt.subplots(1, len(schemes), figsize=(5 * len(schemes), 0.55 * len(bits) + 1.4), sharey=True)
    for ax, scheme in zip(np.atleast_1d(axes), schemes):
        for row, b in enumerate(bits):
            levels = level_set(b, scheme).numpy()
            ax.hlines(row, 0, 1, color="0.85", lw=1)
            ax.plot(levels, np.full_like(levels, row), "|", ms=12, mew=1.2, color=SCHEME_COLORS.get(scheme))
        ax.set_title(SCHEME_NAMES.get(scheme, scheme))
        ax.set_xlabel("level (units of α)")
        ax.set_xlim(-0.03, 1.03)
    axes = np.atleast_1d(axes)
    axes[0].set_yticks(range(len(bits)), [f"b = {b} ({2**b} levels)" for b in bits])
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def levels_on_weights(w: torch.Tensor, bits: int, alphas: dict[str, float], source: str):
    """Histogram of normalized weights w [N] (σ units) with each scheme's signed b-bit levels at
    its α (σ); one panel per scheme of ``alphas``."""
    from .levels import weight_level_set

    fig, axes = plt.subplots(1, len(alphas), figsize=(5 * len(alphas), 3.6), sharey=True)
    for ax, (scheme, alpha) in zip(np.atleast_1d(axes), alphas.items()):
        ax.hist(w.numpy(), bins=160, range=(-alpha * 1.3, alpha * 1.3), density=True, color="0.65", label="weights")
        ax.vlines(weight_level_set(bits, scheme).numpy() * alpha, 0, 1, transform=ax.get_xaxis_transform(),
                  color=SCHEME_COLORS.get(scheme), lw=1, label=f"{bits}-bit levels, α = {alpha:.2f} σ")
        ax.set_title(SCHEME_NAMES.get(scheme, scheme))
        ax.set_xlabel("normalized weight (σ)")
        ax.legend(fontsize=8, loc="upper right")
    np.atleast_1d(axes)[0].set_ylabel("density")
    fig.suptitle(f"Weights of {source}", fontsize=10)
    fig.tight_layout()
    return fig


def error_vs_bits(rows: list[dict]):
    """Best-α quantization error (σ², log scale) per bitwidth, a line per scheme; rows as
    :func:`apot_utils.analysis.error_table` returns them."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        mine = [r for r in rows if r["scheme"] == scheme]
        ax.plot([r["bits"] for r in mine], [r["mse"] for r in mine], "o-", color=SCHEME_COLORS.get(scheme),
                label=SCHEME_NAMES.get(scheme, scheme))
    ax.set_yscale("log")
    ax.set_xticks(sorted({r["bits"] for r in rows}))
    ax.set_xlabel("weight bitwidth b (sign included)")
    ax.set_ylabel("mean squared error (σ², best α)")
    ax.set_title("Weight quantization error")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def normalization(w: torch.Tensor, name: str):
    """A layer's weights [any shape] before and after ``normalize_weight``."""
    from .quantize import normalize_weight

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, values, title, unit in ((axes[0], w, "as trained", "weight value"),
                                    (axes[1], normalize_weight(w), "normalized: (w − mean) / std", "normalized weight (σ)")):
        values = values.detach().flatten()
        ax.hist(values.numpy(), bins=100, color="0.55")
        ax.set_title(f"{name}: {title}\nmean {values.mean():.2e}, std {values.std():.3g}", fontsize=9)
        ax.set_xlabel(unit)
        ax.set_ylabel("count")
    fig.tight_layout()
    return fig


def quantizer_curves(curves: dict[str, dict[str, torch.Tensor]], alpha: float, unit: str):
    """Rows: label -> :func:`apot_utils.analysis.quantizer_curves` output. Columns: the forward
    staircase, the input gradient and the α gradient, against the input (``unit``)."""
    fig, axes = plt.subplots(len(curves), 3, figsize=(14, 3.2 * len(curves)), sharex=True, squeeze=False)
    for row, (label, c) in zip(axes, curves.items()):
        x = c["x"].numpy()
        row[0].plot(x, x, ":", color="0.6", label="identity")
        row[0].plot(x, c["q"].numpy(), label="q(x)")
        row[1].plot(x, c["dq_dx"].numpy(), color="tab:purple")
        row[2].plot(x, c["dq_dalpha"].numpy(), color="tab:red")
        for ax, title in zip(row, ("forward q(x)", "∂q/∂x (straight through)", "∂q/∂α")):
            ax.set_title(f"{label}: {title}", fontsize=9)
            ax.axvline(alpha, color="0.75", lw=0.8)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
        row[0].set_ylabel(f"output ({unit})")
    for ax in axes[-1]:
        ax.set_xlabel(f"input x ({unit}; grey line: α = {alpha:g})")
    fig.tight_layout()
    return fig


def alpha_trajectories(trajectories: dict[str, dict[str, list[float]]], best: dict[str, float]):
    """label -> :func:`apot_utils.analysis.fit_alpha` trajectory; ``best``: label -> grid-search α.
    Left: α (σ) per step, dashed at the grid optimum; right: the error (σ²) per step."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for (label, t), color in zip(trajectories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        axes[0].plot(t["alpha"], color=color, label=f"{label}: learned")
        axes[0].axhline(best[label], color=color, ls="--", lw=1, label=f"{label}: grid-search optimum")
        axes[1].plot(t["mse"], color=color, label=label)
    axes[0].set_ylabel("α (σ)")
    axes[1].set_ylabel("quantization error (σ²)")
    axes[1].set_yscale("log")
    for ax, title in zip(axes, ("Clipping threshold during gradient descent", "Error during gradient descent")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def activation_histogram(x: torch.Tensor, q: torch.Tensor, levels: torch.Tensor, alpha: float, name: str):
    """A layer's input activations x and their quantized values q (same shape), with the levels
    α·levels: left the raw inputs, right how many values land on each level."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    x, q = x.flatten(), q.flatten()
    axes[0].hist(x.numpy(), bins=120, range=(0, max(float(x.max()), alpha) * 1.02), color="0.6", log=True)
    axes[0].vlines((levels * alpha).numpy(), 0, 1, transform=axes[0].get_xaxis_transform(), color="tab:green",
                   lw=0.9, label=f"levels (α = {alpha:.2f})")
    axes[0].set_title(f"{name}: input activations ({x.numel():,} values)", fontsize=9)
    axes[0].legend(fontsize=8)
    values = (levels * alpha).to(q.dtype)
    counts = (q[:, None] == values[None, :]).sum(0)
    axes[1].bar(np.arange(len(values)), 100.0 * counts.numpy() / q.numel(), color="tab:green")
    axes[1].set_xticks(np.arange(len(values)), [f"{v:.2f}" for v in values.tolist()], rotation=90, fontsize=7)
    axes[1].set_title(f"{name}: share of values on each level", fontsize=9)
    axes[1].set_ylabel("share of activations (%)")
    axes[0].set_xlabel("activation value")
    axes[0].set_ylabel("count (log)")
    axes[1].set_xlabel("quantization level (activation units)")
    fig.tight_layout()
    return fig


def draw_level_explorer(fig, w: torch.Tensor, magnitudes: torch.Tensor, alpha: float, error: float,
                        alphas: torch.Tensor, errors: torch.Tensor, title: str):
    """The bitwidth widget's picture, drawn on an existing Figure ``fig`` (cleared first).

    w: normalized weights [N] (σ); magnitudes: the weight magnitude set at α = 1; alpha: the
    chosen α (σ) and ``error`` its error (σ²); alphas, errors: the error curve [A] over α.
    Panels: the weight histogram with the signed levels (their lines carry gid 'levels'), the
    quantization function, the error against α.
    """
    from .quantize import quantize_weight

    levels = torch.cat([-magnitudes[1:].flip(0), magnitudes])
    fig.clear()
    ax_hist, ax_fn, ax_err = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    span = max(alpha * 1.3, 3.0)
    ax_hist.hist(w.numpy(), bins=160, range=(-span, span), density=True, color="0.65")
    ax_hist.vlines((levels * alpha).numpy(), 0, 1, transform=ax_hist.get_xaxis_transform(), color="tab:green",
                   lw=0.9, gid="levels")
    ax_hist.set_title(f"{title}: {len(levels)} levels on the weights", fontsize=10)
    ax_hist.set_xlabel("normalized weight (σ)")
    ax_hist.set_ylabel("density")
    x = torch.linspace(-span, span, 1201, dtype=torch.float64)
    with torch.no_grad():
        q = quantize_weight(x, torch.tensor(alpha, dtype=torch.float64), magnitudes)
    ax_fn.plot(x.numpy(), x.numpy(), ":", color="0.6", label="identity")
    ax_fn.plot(x.numpy(), q.numpy(), color="tab:green", label="q(w)")
    ax_fn.set_title("quantization function", fontsize=10)
    ax_fn.set_xlabel("normalized weight w (σ)")
    ax_fn.set_ylabel("quantized weight (σ)")
    ax_fn.legend(fontsize=8, loc="upper left")
    ax_err.plot(alphas.numpy(), errors.numpy(), color="0.3")
    ax_err.plot([alpha], [error], "o", color="tab:red", label=f"α = {alpha:.2f} σ")
    ax_err.set_yscale("log")
    ax_err.set_title("error against α", fontsize=10)
    ax_err.set_xlabel("clipping threshold α (σ)")
    ax_err.set_ylabel("mean squared error (σ²)")
    ax_err.legend(fontsize=8)
    for ax in (ax_hist, ax_fn, ax_err):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def training_curves(scalars: dict[str, tuple[list[int], list[float]]], title: str):
    """A run's TensorBoard scalars (:func:`apot_utils.tblogs.read_scalars`): training loss and top-1
    per logged step, validation top-1 per epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    curves({"training (batch)": scalars["loss_train"]}, f"{title}: loss", "step", "cross-entropy", ax=axes[0])
    curves({"training (batch)": scalars["acc1_train"], "validation": scalars["acc1_val"]},
           f"{title}: top-1", "step", "top-1 accuracy (%)", ax=axes[1])
    axes[1].lines[-1].set(marker="o", ls="none")
    axes[1].legend(fontsize=8)                 # again, so that the legend shows the marker
    fig.tight_layout()
    return fig


def alpha_trajectories_by_layer(scalars: dict[str, tuple[list[int], list[float]]]):
    """The ``alpha/weight/<layer>`` and ``alpha/act/<layer>`` scalars of a run: one line per layer,
    colored from the first layer (light) to the last (dark)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, kind, unit in ((axes[0], "weight", "σ"), (axes[1], "act", "activation units")):
        tags = [t for t in scalars if t.startswith(f"alpha/{kind}/")]
        colors = plt.cm.viridis(np.linspace(0.9, 0.1, len(tags)))
        for tag, color in zip(tags, colors):
            ax.plot(*scalars[tag], color=color, lw=1)
        ax.set_title(f"{'weight' if kind == 'weight' else 'activation'} α of {len(tags)} layers "
                     f"({tags[0].split('/')[-1]} light … {tags[-1].split('/')[-1]} dark)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(f"α ({unit})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
