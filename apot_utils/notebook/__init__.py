"""The chapters' helpers: analysis, plots, the bitwidth widget."""
