"""Clocks. The control loop never calls ``time`` itself: a wall clock runs real arms (and sims in real
time), a lockstep clock runs sims deterministically (tests, the latency x strategy table), where time
moves only when the loop sleeps and a reply "arrives" when the simulated latency says it does."""
from __future__ import annotations

import time


class WallClock:
    lockstep = False

    def __init__(self, spin_ns: int = 1_000_000):
        self.spin_ns = spin_ns  # the last stretch before a deadline is spun, not slept (sleep overshoots)

    @staticmethod
    def now_ns() -> int:
        return time.monotonic_ns()

    def sleep_until(self, t_ns: int) -> None:
        left = t_ns - time.monotonic_ns()
        if left > self.spin_ns:
            time.sleep((left - self.spin_ns) / 1e9)
        while time.monotonic_ns() < t_ns:
            pass


class LockstepClock:
    """Simulated time: ``sleep_until`` jumps to the deadline at once."""

    lockstep = True

    def __init__(self, start_ns: int = 0):
        self.t = int(start_ns)

    def now_ns(self) -> int:
        return self.t

    def sleep_until(self, t_ns: int) -> None:
        self.t = max(self.t, int(t_ns))
