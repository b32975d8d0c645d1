"""Figures the notebooks show. Each function returns the matplotlib Figure it drew."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..core.levels import level_set, weight_level_set
from ..core.reference import normalize_weight
from ..fakequant.layers import quantized_layers
from ..fakequant.quantizers import quantize_weight
from ..files.tblogs import STEPS_PER_EPOCH


def alphas_by_layer(alpha_rows: dict, title: str = "Clipping thresholds learned by the released models"):
    """alpha_rows: label -> [(layer, weight α, act α)] in module order (labels: a bitwidth or a string).
    Two panels, layers on x; one legend under both."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharex=True)
    for label, rows in alpha_rows.items():
        x = np.arange(len(rows))
        name = f"{label}-bit" if isinstance(label, int) else label
        axes[0].plot(x, [r[1] for r in rows], "o-", ms=4, label=name)
        axes[1].plot(x, [r[2] for r in rows], "o-", ms=4, label=name)
    names = [r[0].replace("downsample.0", "down") for r in next(iter(alpha_rows.values()))]
    for ax, kind, unit in ((axes[0], "weight α", "σ of the layer's weights"),
                           (axes[1], "activation α", "activation units")):
        ax.set_title(kind)
        ax.set_ylabel(f"α ({unit})")
        ax.set_xticks(np.arange(len(names)), names, rotation=90, fontsize=8 if len(names) <= 30 else 6)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def weight_histograms(model: torch.nn.Module, names: list[str]):
    """Histograms of the named layers' weights with their quantization levels (α · levels,
    mapped back to weight units through the layer's mean and std)."""
    layers = dict(quantized_layers(model))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5))
    for ax, name in zip(np.atleast_1d(axes), names):
        layer = layers[name]
        w = layer.weight.detach().flatten()
        mags = layer.weight_levels.sort().values
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


def release_curves(logs: dict, tag: str, title: str, ylabel: str, ylim=None, log_y: bool = False):
    """One panel per architecture: scalar ``tag`` of the released runs against the epoch (step / 1,250,
    one step being one iteration at batch 1,024), a line per bitwidth. logs: (arch, bit) -> scalars, as
    :func:`apot_utils.files.tblogs.release_logs` returns."""
    archs = sorted({arch for arch, _ in logs})
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4), sharey=True)
    for ax, arch in zip(np.atleast_1d(axes), archs):
        series = {f"{bit}-bit": ([step / STEPS_PER_EPOCH for step in logs[(arch, bit)][tag][0]],
                                 logs[(arch, bit)][tag][1])
                  for a, bit in sorted(logs) if a == arch}
        curves(series, f"{arch}: {title}", "epoch (1,250 steps of batch 1k)", ylabel, ax=ax)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if log_y:
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def imagenet_accuracy(rows: dict[str, dict[int, dict[str, float]]], readme: dict[str, dict[int, float]]):
    """rows: arch -> bit -> {'best top-1', 'last top-1', 'best top-5', 'last top-5'} (%) read from the
    released logs; readme: arch -> bit -> the release README's accuracy. Top-1 and top-5 panels."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {"resnet18": "tab:blue", "resnet34": "tab:orange"}
    for arch, by_bit in rows.items():
        bits = sorted(by_bit)
        for ax, k in zip(axes, ("top-1", "top-5")):
            ax.plot(bits, [by_bit[b][f"best {k}"] for b in bits], "o-", color=colors.get(arch),
                    label=f"{arch}: best epoch (chosen on validation)")
            ax.plot(bits, [by_bit[b][f"last {k}"] for b in bits], "s--", color=colors.get(arch), mfc="none",
                    label=f"{arch}: last epoch")
        axes[0].plot(sorted(readme[arch]), [readme[arch][b] for b in sorted(readme[arch])], "x", ms=9,
                     color=colors.get(arch), label=f"{arch}: release README")
    for ax, k in zip(axes, ("top-1", "top-5")):
        ax.set_xticks([2, 3, 4, 5])
        ax.set_xlabel("bitwidth (weights and activations)")
        ax.set_ylabel(f"ImageNet validation {k} (%)")
        ax.set_title(f"Released runs: {k} against bitwidth")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def lr_schedules(logs: dict):
    """The learning rate of every released run against the epoch (log scale), and a zoom on the first
    five epochs that shows the warm-up."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    for (arch, bit), scalars in sorted(logs.items()):
        steps, lr = scalars["lr"]
        epochs = np.array(steps) / STEPS_PER_EPOCH
        for ax in axes:
            ax.plot(epochs, lr, label=f"{arch} {bit}-bit", lw=1.2, ls="-" if arch == "resnet18" else "--")
    axes[0].set_yscale("log")
    axes[0].set_title("Learning rate of the released ImageNet runs")
    axes[1].set_xlim(0, 5)
    axes[1].set_title("first 5 epochs: a 2,500-step ramp", fontsize=10)
    for ax in axes:
        ax.set_xlabel("epoch (1,250 steps of batch 1k)")
        ax.set_ylabel("lr")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def drop_from_full_precision(exact: dict, jpeg: dict, published: dict[str, dict[int, float]]):
    """Accuracy drop from full precision (points) per bitwidth.

    exact, jpeg: label -> {bit: (accuracy − full precision's, in points, (low, high) its paired 95 % interval, from
    the same images: :func:`apot_utils.notebook.stats.paired_interval`) or None}; published: label -> {bit:
    accuracy %} with 32 included. Left: the published figures and this project's on the exact images; right: the
    JPEG copy, on its own axis.
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1.6, 1]})
    bits = sorted({b for group in (exact, jpeg, published) for values in group.values() for b, v in values.items()
                   if b != 32 and v is not None})
    markers = iter("sD^v")
    for label, values in published.items():
        xs = [b for b in bits if b in values]
        axes[0].plot(xs, [values[b] - values[32] for b in xs], next(markers), ms=8, mfc="none", label=label)
    for ax, measured in ((axes[0], exact), (axes[1], jpeg)):
        for (label, values), offset in zip(measured.items(), (0.06, -0.06, 0.12)):
            xs = [b for b in bits if values.get(b) is not None]
            drop = np.array([values[b][0] for b in xs])
            low = np.array([values[b][1][0] for b in xs])
            high = np.array([values[b][1][1] for b in xs])
            ax.errorbar(np.array(xs) + offset, drop, yerr=[drop - low, high - drop], fmt="o", capsize=4, label=label)
    for ax, title in zip(axes, ("published (10,000 test images), and this project on the 1,000 exact ones",
                                "this project on the JPEG copy of the 10,000 test images")):
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xticks(bits, [f"{b}-bit" for b in bits])
        ax.set_xlabel("bitwidth")
        ax.set_ylabel("accuracy − full precision's (points)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("CIFAR-10 ResNet-20: what quantization costs (bars: paired 95 % interval of the difference, same images)")
    fig.tight_layout()
    return fig


SCHEME_NAMES = {"uniform": "uniform", "pot": "power-of-two (PoT)", "apot": "additive PoT (APoT)"}
SCHEME_COLORS = {"uniform": "tab:blue", "pot": "tab:orange", "apot": "tab:green"}


def post_training_accuracy(results: dict[tuple[int, str], tuple[float, tuple[float, float]]], trained: dict[int, float],
                           full_precision: float):
    """Post-training top-1 (%) against the bitwidth, one line per scheme with each point's 95 % interval.
    results: (bit, scheme) -> (top-1, (low, high)); trained: bit -> top-1 of the quantization-aware trained
    APoT model (stars); full_precision: top-1, a dashed line."""
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for offset, scheme in zip((-0.08, 0.0, 0.08), ("uniform", "pot", "apot")):
        xs = sorted(b for b, s in results if s == scheme)
        if not xs:
            continue
        top1 = np.array([results[(b, scheme)][0] for b in xs])
        low = np.array([results[(b, scheme)][1][0] for b in xs])
        high = np.array([results[(b, scheme)][1][1] for b in xs])
        ax.errorbar(np.array(xs) + offset, top1, yerr=[top1 - low, high - top1], fmt="o-", capsize=3,
                    color=SCHEME_COLORS[scheme], label=f"{SCHEME_NAMES[scheme]}, post-training")
    bits = sorted(trained)
    ax.plot(bits, [trained[b] for b in bits], "k*", ms=11, label="APoT trained (the release)")
    ax.axhline(full_precision, color="0.4", ls="--", lw=1, label="full precision")
    ax.set_xticks(sorted({b for b, _ in results} | set(bits)))
    ax.set(xlabel="bits (weights and activations)", ylabel="top-1 (%), exact 1,000 test images",
           title="Post-training quantization against training (bars: 95 % interval of each model)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def level_number_lines(bits=range(2, 7), schemes=("uniform", "pot", "apot")):
    """The unsigned b-bit level sets at α = 1, one panel per scheme, one number line per bitwidth."""

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

    fig, axes = plt.subplots(1, len(alphas), figsize=(5 * len(alphas), 3.6), sharey=True, sharex=True)
    span = 1.1 * max(alphas.values())
    for ax, (scheme, alpha) in zip(np.atleast_1d(axes), alphas.items()):
        ax.hist(w.numpy(), bins=160, range=(-span, span), density=True, color="0.65", label="weights")
        ax.vlines(weight_level_set(bits, scheme).numpy() * alpha, 0, 1, transform=ax.get_xaxis_transform(),
                  color=SCHEME_COLORS.get(scheme), lw=1, label=f"{bits}-bit levels, α = {alpha:.2f} σ")
        ax.set_title(SCHEME_NAMES.get(scheme, scheme))
        ax.set_xlabel("normalized weight (σ)")
        ax.legend(fontsize=8, loc="upper right")
        ax.set_xlim(-span, span)
    np.atleast_1d(axes)[0].set_ylabel("density")
    fig.suptitle(f"Weights of {source}", fontsize=10)
    fig.tight_layout()
    return fig


def error_vs_bits(rows: list[dict]):
    """Best-α quantization error (σ², log scale) per bitwidth, a line per scheme; rows as
    :func:`apot_utils.notebook.analysis.error_table` returns them."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        mine = [r for r in rows if r["scheme"] == scheme]
        ax.plot([r["bits"] for r in mine], [r["mse"] for r in mine], "o-", color=SCHEME_COLORS.get(scheme),
                label=SCHEME_NAMES.get(scheme, scheme))
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(sorted({r["bits"] for r in rows}))
    ax.set_xlabel("weight bitwidth b (sign included)")
    ax.set_ylabel("mean squared error (σ², best α)")
    ax.set_title("Weight quantization error")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def normalization(layers: dict[str, torch.Tensor]):
    """Several layers' weights (name -> tensor) as trained (left) and after ``normalize_weight`` (right),
    overlaid as density outlines: different scales before, one scale (σ) after."""

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for name, w in layers.items():
        w = w.detach().flatten().double()
        for ax, values in ((axes[0], w), (axes[1], normalize_weight(w))):
            ax.hist(values.numpy(), bins=120, histtype="step", density=True, lw=1.2,
                    label=f"{name} (std {w.std():.3f})" if ax is axes[0] else name)
    axes[0].set_title("as trained: each layer has its own scale")
    axes[0].set_xlabel("weight value")
    axes[1].set_title("normalized, (w − mean) / std: one scale for all")
    axes[1].set_xlabel("normalized weight (σ of its layer)")
    axes[1].set_xlim(-5, 5)
    for ax in axes:
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def quantizer_curves(curves: dict[str, dict[str, torch.Tensor]], alpha: float, unit: str):
    """Rows: label -> :func:`apot_utils.notebook.analysis.quantizer_curves` output. Columns: the forward
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


def _log_axis_labelled_at(ax, values) -> None:
    """A log y axis whose five labelled ticks lie where ``values`` (any numbers) are, two significant digits,
    instead of at powers of ten that the curves may never reach."""
    v = np.concatenate([np.ravel(np.asarray(x, dtype=float)) for x in values])
    v = v[v > 0]
    low, high = v.min(), v.max()
    ax.set_yscale("log")
    ax.set_ylim(low / 1.08, high * 1.08)
    ticks = sorted({float(f"{t:.2g}") for t in np.geomspace(low, high, 5)})
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda t, _: f"{t:.2g}"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def alpha_trajectories(trajectories: dict[str, dict[str, list[float]]], best: dict[str, tuple[float, float]]):
    """label -> :func:`apot_utils.notebook.analysis.fit_alpha` trajectory; ``best``: label -> (α, error) of the grid
    search. Left: α (σ) per step, dashed at the grid optimum; right: the error (σ²) per step, dashed at the
    grid optimum's error."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for (label, t), color in zip(trajectories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        axes[0].plot(t["alpha"], color=color, label=f"{label}: learned")
        axes[0].axhline(best[label][0], color=color, ls="--", lw=1, label=f"{label}: grid-search optimum")
        axes[1].plot(t["mse"], color=color, label=f"{label}: learned α")
        axes[1].axhline(best[label][1], color=color, ls="--", lw=1, label=f"{label}: at the grid optimum")
    axes[0].set_ylabel("α (σ)")
    axes[1].set_ylabel("quantization error (σ²)")
    _log_axis_labelled_at(axes[1], [t["mse"] for t in trajectories.values()] + [b[1] for b in best.values()])
    for ax, title in zip(axes, ("Clipping threshold during gradient descent", "Error during gradient descent")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def alpha_gradient_rules(rules: dict[str, dict[str, torch.Tensor]]):
    """label -> {'u': x/α [P], 'grad': ∂q/∂α [P]} (:func:`apot_utils.notebook.analysis.alpha_gradient`): the α
    gradient of each rule against the input in units of α, one panel each, sharing the axes."""
    fig, axes = plt.subplots(1, len(rules), figsize=(4.6 * len(rules), 3.4), sharey=True)
    for ax, (label, r) in zip(np.atleast_1d(axes), rules.items()):
        ax.plot(r["u"].numpy(), r["grad"].numpy(), color="tab:red")
        ax.axvline(1, color="0.6", lw=0.8)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("input x / α")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("∂q/∂α")
    fig.tight_layout()
    return fig


def alpha_rule_fits(fits: dict[str, dict[str, list[float]]], name: str):
    """label -> trajectory ('alpha', 'mse' per step) of α learned on a layer's activations by each rule."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for label, t in fits.items():
        axes[0].plot(t["alpha"], label=label)
        axes[1].plot(t["mse"], label=label)
    axes[0].set_ylabel("α (activation units)")
    axes[1].set_ylabel("mean squared quantization error")
    _log_axis_labelled_at(axes[1], [t["mse"] for t in fits.values()])
    for ax, title in zip(axes, (f"{name}: α during gradient descent", f"{name}: error during gradient descent")):
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def activation_histogram(x: torch.Tensor, q: torch.Tensor, levels: torch.Tensor, alpha: float, name: str):
    """A layer's input activations x and their quantized values q (same shape), with the levels
    α·levels (at α = 1: the unsigned set, or a signed one such as ``weight_level_set``): left the raw inputs,
    right how many values land on each level."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    x, q, levels = x.flatten(), q.flatten(), levels.sort().values
    low = min(float(x.min()), -alpha) * 1.02 if levels[0] < 0 else 0.0
    axes[0].hist(x.numpy(), bins=120, range=(low, max(float(x.max()), alpha) * 1.02), color="0.6", log=True)
    axes[0].vlines((levels * alpha).numpy(), 0, 1, transform=axes[0].get_xaxis_transform(), color="tab:green",
                   lw=0.9, label=f"levels (α = {alpha:.2f})")
    axes[0].set_title(f"{name}: input activations ({x.numel():,} values)", fontsize=9)
    axes[0].legend(fontsize=8)
    values = (levels * alpha).to(q.dtype)
    counts = (q[:, None] == values[None, :]).sum(0)
    axes[1].bar(np.arange(len(values)), 100.0 * counts.numpy() / q.numel(), color="tab:green")
    axes[1].set_xticks(np.arange(len(values)), [f"{v:.2f}" for v in values.tolist()], fontsize=9 if len(values) <= 16 else 7,
                       rotation=0 if len(values) <= 8 else 90)
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
    _log_axis_labelled_at(ax_err, [errors.numpy(), [error]])
    ax_err.set_title("error against α", fontsize=10)
    ax_err.set_xlabel("clipping threshold α (σ)")
    ax_err.set_ylabel("mean squared error (σ²)")
    ax_err.legend(fontsize=8)
    for ax in (ax_hist, ax_fn, ax_err):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def smoothed(values: list[float], window: int) -> np.ndarray:
    """Running mean over the last ``window`` values (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=float))])
    i = np.arange(1, len(c))
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def training_curves(scalars: dict[str, tuple[list[int], list[float]]], title: str, window: int = 8):
    """A run's TensorBoard scalars (:func:`apot_utils.files.tblogs.read_scalars`): training loss and top-1 per
    step (thin: each batch; thick: running mean of ``window`` batches), validation top-1 (markers,
    step 0 = before the first step)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, tag, ylabel in ((axes[0], "loss_train", "loss (cross-entropy, or distillation with a teacher)"),
                            (axes[1], "acc1_train", "top-1 accuracy (%)")):
        steps, values = scalars[tag]
        ax.plot(steps, values, color="tab:blue", lw=0.6, alpha=0.4, label="training batch")
        ax.plot(steps, smoothed(values, window), color="tab:blue", lw=2, label=f"training, mean of {window} batches")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].plot(*scalars["acc1_val"], "o", color="tab:red", ms=7, label="validation")
    axes[0].plot(*scalars["loss_val"], "o", color="tab:red", ms=7, label="validation (cross-entropy on the labels)")
    axes[0].set_title(f"{title}: loss", fontsize=10)
    axes[1].set_title(f"{title}: top-1", fontsize=10)
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def alpha_targets(start: list[tuple[str, float, float]], end: list[tuple[str, float, float]],
                  target: list[tuple[str, float, float]], target_label: str, title: str | None = None):
    """Per quantized layer, α at the start and at the end of a run beside a reference model's α
    (each a list of (layer, weight α, act α) in module order), under ``title`` if given."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharex=True)
    x = np.arange(len(start))
    for ax, col, kind in ((axes[0], 1, "weight α (σ)"), (axes[1], 2, "activation α")):
        ax.plot(x, [r[col] for r in target], "x", ms=9, color="tab:green", label=target_label)
        ax.plot(x, [r[col] for r in start], "o", mfc="none", color="tab:blue", label="start of the run")
        ax.plot(x, [r[col] for r in end], ".", ms=9, color="tab:red", label="end of the run")
        ax.set_ylabel(kind)
        ax.set_xticks(x, [r[0].replace("downsample.0", "down") for r in start], rotation=90, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.95) if title else None)
    return fig


def integer_layer(trace: dict, name: str):
    """One exported layer in integers (:func:`apot_utils.integer.verify.layer_trace`): how often each signed
    weight integer and each activation integer occurs, and the float output against s · the integer
    convolution."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in ((axes[0], "weight_integers", "weight integers c_w"),
                           (axes[1], "act_integers", "activation integers I_a")):
        values, counts = torch.unique(trace[key], return_counts=True)
        ax.bar(range(len(values)), counts.numpy(), color="tab:blue")
        ax.set_xticks(range(len(values)), [str(v) for v in values.tolist()], fontsize=8, rotation=90 if len(values) > 12 else 0)
        ax.set_title(title)
        ax.set_ylabel("count")
    fake = trace["fake"].double().flatten()
    rescaled = (trace["integer"].double() * trace["scale"].view(1, -1, 1, 1)).flatten()
    pick = torch.linspace(0, len(fake) - 1, min(len(fake), 4000)).long()
    axes[2].plot(fake[pick].numpy(), rescaled[pick].numpy(), ".", ms=2)
    axes[2].set_xlabel("float output (fake-quantized layer)")
    axes[2].set_ylabel("s · integer convolution")
    gap = float((fake - rescaled).abs().max())
    axes[2].set_title(f"largest absolute difference {gap:.1e} (relative {gap / float(fake.abs().max()):.1e})", fontsize=10)
    fig.suptitle(f"{name}: from codes to integers")
    fig.tight_layout()
    return fig


def onnx_block(graphs: dict, scope: str, title: str = ""):
    """The nodes of ONNX graphs (``onnx.ModelProto`` by name) of one block ``scope`` (e.g. 'layer1.1': the nodes
    named ``layer1.1/...`` or ``layer1.1.<layer>/...``), one column per graph, in execution order, top to bottom:
    each box names the operator and the stored constants it reads (dtype, shape), and arrows join a node to the
    nodes that use its output."""
    import onnx

    dtype = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.FLOAT: "float32",
             onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}
    scope = scope.rstrip("/")
    columns = {name: [n for n in g.graph.node if n.name.startswith((scope + "/", scope + "."))] for name, g in graphs.items()}
    rows = max(len(nodes) for nodes in columns.values())
    fig, axes = plt.subplots(1, len(graphs), figsize=(4.6 * len(graphs), 0.42 * rows + 1.2), squeeze=False)
    for ax, (name, nodes) in zip(axes[0], columns.items()):
        stored = {i.name: i for i in graphs[name].graph.initializer}
        where = {}
        for row, node in enumerate(nodes):
            consts = [stored[i] for i in node.input if i in stored and len(stored[i].dims) > 0]
            detail = ", ".join(f"{dtype.get(c.data_type, c.data_type)}{list(c.dims)}" for c in consts[:2])
            label = node.op_type + (f"  ({detail})" if detail else "")
            ax.text(0, -row, label, ha="center", va="center", fontsize=8, family="monospace",
                    bbox={"boxstyle": "round,pad=0.25", "fc": "#dbe8fb" if node.op_type in _INTEGER_OPS else "#f4f4f4",
                          "ec": "#555"})
            for out in node.output:
                where[out] = row
            for i in node.input:
                if i in where and where[i] != row:
                    rad = 0 if row - where[i] == 1 else 0.5
                    ax.annotate("", (0, -row + 0.28), (0, -where[i] - 0.28),
                                arrowprops={"arrowstyle": "->", "color": "#777", "connectionstyle": f"arc3,rad={rad}"})
        ax.set_xlim(-1.6, 1.6)
        ax.set_ylim(-rows + 0.4, 0.8)
        ax.set_title(f"{name}: {len(nodes)} nodes", fontsize=10)
        ax.axis("off")
    fig.suptitle(title or f"one block ({scope}) in each ONNX graph (blue: 8-bit integer operators)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


_INTEGER_OPS = {"QLinearConv", "QuantizeLinear", "DequantizeLinear", "ConvInteger", "MatMulInteger"}


def stages_by_bitwidth(panels: dict[str, dict[str, float]], title: str):
    """Top-1 (%) of models named 'fp' and '<b>bit_<scheme>_<stage>' (stage 'ptq' or 'qat'), one panel per
    entry of ``panels`` (panel title -> name -> top-1): bars grouped by bitwidth, one per scheme and stage,
    full precision as a dashed line."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (panel, scores) in zip(axes[0], panels.items()):
        keys = [k.split("_") for k in scores if k != "fp"]
        bits = sorted({k[0] for k in keys}, reverse=True)
        bars = [(scheme, stage) for scheme in dict.fromkeys(k[1] for k in keys) for stage in ("ptq", "qat")]
        width = 0.8 / len(bars)
        for i, (scheme, stage) in enumerate(bars):
            values = [scores.get(f"{b}_{scheme}_{stage}", np.nan) for b in bits]
            x = np.arange(len(bits)) + (i - (len(bars) - 1) / 2) * width
            ax.bar(x, values, width, label=f"{scheme}, {'post-training' if stage == 'ptq' else 'fine-tuned'}",
                   color=f"C{bars.index((scheme, 'ptq')) // 2}", alpha=0.45 if stage == "ptq" else 0.95)
            for xi, v in zip(x, values):
                ax.text(xi, v + 0.3, f"{v:.1f}", ha="center", fontsize=7)
        ax.axhline(scores["fp"], color="k", ls="--", lw=1, label=f"full precision {scores['fp']:.1f}")
        ax.set_xticks(np.arange(len(bits)), [b.replace("bit", "-bit") for b in bits])
        ax.set_title(panel, fontsize=10)
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(min(v for v in scores.values()) - 5, scores["fp"] + 3)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
