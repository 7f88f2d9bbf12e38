import pytest

from robopolicy.eval.stats import format_rate, wilson_interval


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(40, 50)  # 0.8 of 50: the textbook interval [0.670, 0.888]
    assert lo == pytest.approx(0.6696, abs=1e-3) and hi == pytest.approx(0.8876, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and 0.0 < wilson_interval(0, 20)[1] < 0.2
    assert wilson_interval(20, 20)[1] == 1.0 and 0.8 < wilson_interval(20, 20)[0] < 1.0
    assert format_rate(40, 50) == "40/50 = 0.80 [0.67, 0.89]"


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(6, 5)
    with pytest.raises(ValueError, match="trial"):
        wilson_interval(0, 0)


def test_mcnemar_exact_matches_the_binomial_tail():
    from robopolicy.eval.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(5, 0) == mcnemar_exact(0, 5) == 2 / 32  # both tails of 5 one-sided pairs
    assert abs(mcnemar_exact(8, 2) - 2 * (1 + 10 + 45) / 1024) < 1e-12
