"""The README's picture: the uniform, power-of-two and APoT level sets at 3 to 5 bits, drawn by the chapters' own
plotting function (chapter 01 shows it beside the weights).

    python docs/make_figures.py        # writes docs/level_sets.png
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from apot_utils.notebook import plots  # noqa: E402

if __name__ == "__main__":
    figure = plots.level_number_lines(bits=range(3, 6))
    figure.savefig(Path(__file__).resolve().parent / "level_sets.png", dpi=110, bbox_inches="tight")
