"""Success rates with their uncertainty: a rate from 50 rollouts is only known to about +-14 points."""
from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) for a binomial rate; unlike rate +- z*se it stays
    inside [0, 1] and is honest at 0/n and n/n."""
    if trials <= 0:
        raise ValueError("wilson_interval needs at least one trial")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def format_rate(successes: int, trials: int) -> str:
    lo, hi = wilson_interval(successes, trials)
    return f"{successes}/{trials} = {successes / trials:.2f} [{lo:.2f}, {hi:.2f}]"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p of a paired comparison: ``b`` pairs only the first won, ``c`` only the
    second (the binomial test of b against b + c at 1/2); ties carry no evidence."""
    import math

    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n)
