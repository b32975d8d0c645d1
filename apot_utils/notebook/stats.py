"""Paired statistics for comparing classifiers on the same test images: an interval for one accuracy (Wilson),
McNemar's exact test and a paired interval for the difference of two, Holm's correction for a family of tests,
and the agreement table of several models against one. Accuracies and intervals are in % (points); counts are
images. Pure Python on counts: the same figures on every machine.
"""
from __future__ import annotations

import math

import torch


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion correct / total, in %."""
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * ((p * (1 - p) / total + z * z / (4 * total * total)) ** 0.5) / (1 + z * z / total)
    return 100 * (centre - half), 100 * (centre + half)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test of two classifiers on the same images: ``only_a`` images only the first
    gets right, ``only_b`` only the second. Under "equally accurate" each of the n = only_a + only_b
    discordant images is a fair coin, so p = P(a count at least this far from n/2), from Binomial(n, 1/2)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given)."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def paired_interval(only_a: int, only_b: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % interval of accuracy(a) − accuracy(b), in points, from the discordant counts of n paired images (``only_a``
    images only a gets right, ``only_b`` only b): the Wald interval with Agresti and Min's adjustment (0.5 added to
    each discordant count, 2 to n)."""
    b, c, m = only_a + 0.5, only_b + 0.5, n + 2
    d = (b - c) / m
    se = math.sqrt(max(b + c - (b - c) ** 2 / m, 0.0)) / m
    return 100 * (d - z * se), 100 * (d + z * se)


def agreement_table(predictions: dict[str, torch.Tensor], targets: torch.Tensor, reference: str) -> list[dict]:
    """Per model, on the same images: accuracy, and against ``reference``'s predictions the images on which
    both are right, both wrong, only the model right, only the reference right, and the McNemar p-value of
    the two being equally accurate (:func:`mcnemar_p`). predictions: label -> [N]."""
    ref_right = predictions[reference] == targets
    rows = []
    for label, pred in predictions.items():
        right = pred == targets
        only_this, only_reference = int((right & ~ref_right).sum()), int((~right & ref_right).sum())
        rows.append({"model": label, "top-1 %": 100 * float(right.float().mean()),
                     "same prediction": int((pred == predictions[reference]).sum()),
                     "both right": int((right & ref_right).sum()), "both wrong": int((~right & ~ref_right).sum()),
                     "only this right": only_this, f"only {reference} right": only_reference,
                     "McNemar p": mcnemar_p(only_this, only_reference)})
    return rows
