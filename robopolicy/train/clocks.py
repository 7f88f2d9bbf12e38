"""Training wall-clock: the time budget a run may spend (``train.minutes``) and the throughput meter of the
progress bar."""
from __future__ import annotations

import time


class Budget:
    """``train.minutes``: training wall-clock, carried over resumes in train_state.pt."""

    def __init__(self, minutes: float, steps: int):
        self.limit_s, self.steps, self.spent, self.t0 = minutes * 60, steps, 0.0, time.perf_counter()

    def elapsed(self) -> float:
        return self.spent + time.perf_counter() - self.t0

    def over(self) -> bool:
        return self.limit_s > 0 and self.elapsed() >= self.limit_s

    def schedule_step(self, step: int) -> int:
        """The step the LR schedule is at: with a budget, the further along of steps and time."""
        if self.limit_s <= 0:
            return step
        return max(step, int(self.steps * min(self.elapsed() / self.limit_s, 1.0)))


class Meter:
    """Samples/s and the fraction of wall time spent waiting for data (loader + host-to-device copy)."""

    def __init__(self, step: int):
        self.t, self.step, self.wait = time.perf_counter(), step, 0.0

    def timed(self, batches):
        """``batches``, adding the time spent waiting for each to ``wait``."""
        batches = iter(batches)
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            self.wait += time.perf_counter() - t
            if batch is None:
                return
            yield batch

    def read(self, step: int, batch: int) -> tuple[float, float]:
        now = time.perf_counter()
        elapsed = max(now - self.t, 1e-9)
        rate, wait = (step - self.step) * batch / elapsed, min(self.wait / elapsed, 1.0)
        self.t, self.step, self.wait = now, step, 0.0
        return rate, wait
