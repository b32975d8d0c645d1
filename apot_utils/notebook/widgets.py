"""The interactive bitwidth widget: ``level_explorer()``.

Controls for the bitwidth b, the number of additive terms n (APoT; the paper's n, each term then
about k = b/n bits wide), the scheme and the clipping threshold
α redraw one picture (:func:`apot_utils.notebook.plots.draw_level_explorer`): the signed b-bit weight
levels on a weight histogram, the quantization function and the error against α. The picture
is a PNG swapped into an ``ipywidgets.Image``, so a redraw replaces it in place, without
flicker. Displayed where no widget frontend runs (nbconvert, nbval, a static notebook viewer),
the explorer shows that PNG as an ordinary image.
"""
from __future__ import annotations

import base64
import io
from functools import lru_cache

import ipywidgets as w
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.levels import MAX_BITS, MIN_BITS, SCHEMES, available_terms, default_terms, weight_magnitudes
from .analysis import pooled_normalized, quantization_mse, resnet20_weights
from .plots import SCHEME_NAMES, draw_level_explorer

EXPLORER_ALPHAS = torch.arange(0.25, 8.0001, 0.125, dtype=torch.float64)   # σ, the error curve's grid


class LevelExplorer:
    """The widget behind :func:`level_explorer`. ``widget`` is the ipywidgets tree; the controls
    (``bits``, ``terms``, ``scheme``, ``alpha``), ``summary`` (an HTML line) and ``figure`` are
    attributes so code and tests can drive and inspect them."""

    def __init__(self, weights: torch.Tensor, source: str, bits: int = 4, scheme: str = "apot", alpha: float = 2.5,
                 max_points: int = 60_000, seed: int = 0):
        weight_magnitudes(bits, scheme)            # a clear ValueError for an unknown bitwidth or scheme
        if not float(EXPLORER_ALPHAS[0]) <= alpha <= float(EXPLORER_ALPHAS[-1]):
            raise ValueError(f"alpha must be from {float(EXPLORER_ALPHAS[0])} to {float(EXPLORER_ALPHAS[-1])} σ, got {alpha}")
        weights = weights.flatten().double()
        if weights.numel() > max_points:   # a fixed random subset keeps every redraw well under a second
            pick = torch.randperm(weights.numel(), generator=torch.Generator().manual_seed(seed))[:max_points]
            weights = weights[pick]
        self.weights, self.source = weights, source
        style = {"description_width": "initial"}
        self.bits = w.IntSlider(value=bits, min=MIN_BITS, max=MAX_BITS, description="bitwidth b", style=style)
        self.terms = w.IntSlider(value=1, min=1, max=1, description="additive terms n", style=style)
        self.scheme = w.Dropdown(options=[(SCHEME_NAMES[s], s) for s in SCHEMES], value=scheme,
                                 description="scheme", style=style)
        self.alpha = w.FloatSlider(value=alpha, min=float(EXPLORER_ALPHAS[0]), max=float(EXPLORER_ALPHAS[-1]),
                                   step=0.05, description="α (σ)", readout_format=".2f", style=style)
        self.summary = w.HTML()
        self.image = w.Image(format="png", layout=w.Layout(width="100%", max_width="1300px"))
        self.figure = Figure(figsize=(13, 3.8), dpi=90)
        FigureCanvasAgg(self.figure)
        self.widget = w.VBox([w.HBox([self.bits, self.terms]), w.HBox([self.scheme, self.alpha]),
                              self.summary, self.image])
        self._error_curve = lru_cache(maxsize=32)(self._compute_error_curve)
        self._sync_terms()
        self.bits.observe(self._on_bits_or_scheme, names="value")
        self.scheme.observe(self._on_bits_or_scheme, names="value")
        self.terms.observe(self._redraw, names="value")
        self.alpha.observe(self._redraw, names="value")
        self._redraw()

    def _sync_terms(self) -> None:
        """n counts the terms of the (b − 1)-bit magnitude set: 1..b − 1 (default the release's), APoT only."""
        magnitude_bits = self.bits.value - 1
        offered = available_terms(magnitude_bits)       # 1..b − 1 up to 8 bits: every n float32 can hold
        self._syncing = True
        try:
            self.terms.max = max(offered)
            self.terms.min = min(offered)
            self.terms.value = default_terms(magnitude_bits)
        finally:
            self._syncing = False
        self.terms.disabled = self.scheme.value != "apot" or magnitude_bits == 1

    def _on_bits_or_scheme(self, change=None) -> None:
        self._sync_terms()
        self._redraw()

    def _settings(self) -> tuple[int, str, int | None]:
        terms = self.terms.value if self.scheme.value == "apot" else None
        return self.bits.value, self.scheme.value, terms

    def _compute_error_curve(self, bits: int, scheme: str, terms: int | None) -> torch.Tensor:
        return quantization_mse(self.weights, bits, scheme, EXPLORER_ALPHAS, terms)

    def _redraw(self, change=None) -> None:
        if self._syncing:
            return
        bits, scheme, terms = self._settings()
        magnitudes = weight_magnitudes(bits, scheme, terms)
        alpha = self.alpha.value
        error = float(quantization_mse(self.weights, bits, scheme, alpha, terms))
        curve = self._error_curve(bits, scheme, terms)
        best = int(curve.argmin())
        terms_text = f", n = {terms}" if terms is not None else ""
        title = f"{bits}-bit {SCHEME_NAMES[scheme]}{terms_text}"
        self.summary.value = (f"<b>{title}</b>: <span class='apot-level-count'>{2 * len(magnitudes) - 1}</span> "
                              f"weight levels; α = {alpha:.2f} σ, mean squared error {error:.4g} σ² "
                              f"(best on the grid: α = {float(EXPLORER_ALPHAS[best]):.2f} σ, {float(curve[best]):.4g} σ²). "
                              f"Weights: {self.source}.")
        draw_level_explorer(self.figure, self.weights, magnitudes, alpha, error, EXPLORER_ALPHAS, curve, title)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        self.image.value = buffer.getvalue()

    def drawn_levels(self) -> list[float]:
        """Positions (σ) of the level lines now drawn on the histogram."""
        lines = [c for ax in self.figure.axes for c in ax.collections if c.get_gid() == "levels"]
        return sorted(float(segment[0][0]) for c in lines for segment in c.get_segments())

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        return bundle


def level_explorer(weights: torch.Tensor | None = None, source: str | None = None, **settings) -> LevelExplorer:
    """The interactive bitwidth widget; display the returned object (last line of a cell).

    weights: normalized weights [any shape] (σ); default the released full-precision ResNet-20's
    (a randomly initialized ResNet-20's when that checkpoint is unavailable). settings: initial ``bits`` (2..8),
    ``scheme`` ('apot', 'pot', 'uniform'), ``alpha`` (σ).
    """
    if weights is None:

        layers, source = resnet20_weights()
        weights = pooled_normalized(layers)
    return LevelExplorer(weights, source or "given tensor", **settings)
