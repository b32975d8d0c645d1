"""The paired statistics of apot_utils.notebook.stats, against their definitions computed another way."""
import math

import pytest

from apot_utils.notebook import stats


def test_mcnemar_p_is_the_exact_binomial_tail():
    # 18 against 34 discordant images: 2 · P(Binomial(52, ½) ≤ 18), summed here term by term in floats
    tail = sum(math.comb(52, i) for i in range(19)) / 2**52
    assert stats.mcnemar_p(18, 34) == pytest.approx(2 * tail) == pytest.approx(0.0365, abs=1e-4)
    assert stats.mcnemar_p(34, 18) == stats.mcnemar_p(18, 34)
    assert stats.mcnemar_p(10, 10) == 1.0 and stats.mcnemar_p(0, 0) == 1.0
    assert stats.mcnemar_p(0, 10) == pytest.approx(2 / 1024)


def test_wilson_interval_ends_where_the_score_test_reaches_z():
    # Wilson's interval: the proportions p at which (p̂ − p) / sqrt(p (1 − p) / n) = ±z
    for correct, total in ((930, 1000), (17, 20), (1, 50)):
        low, high = stats.wilson_interval(correct, total)
        for end, sign in ((low / 100, 1), (high / 100, -1)):
            score = (correct / total - end) / math.sqrt(end * (1 - end) / total)
            assert score == pytest.approx(sign * 1.959964, abs=1e-6)


def test_agreement_table_counts_and_tests_each_model_against_the_reference():
    import torch
    targets = torch.tensor([0, 1, 2, 3])
    rows = stats.agreement_table({"ref": torch.tensor([0, 1, 0, 0]), "q": torch.tensor([0, 0, 2, 3])}, targets, "ref")
    q = rows[1]
    assert (q["both right"], q["both wrong"], q["only this right"], q["only ref right"]) == (1, 0, 2, 1)
    assert q["McNemar p"] == stats.mcnemar_p(2, 1) and rows[0]["McNemar p"] == 1.0
