"""The action scheduler: which action is due at each control tick, from the chunks that have arrived.

Steps are ticks of the episode (tick s is due at t0 + s * period). A chunk computed from the window at
step t holds actions due at t, t+1, ...; by the time it arrives some of them are already past, and
those are dropped (counted), never executed late.

- ``replan`` (receding horizon, delay-compensated): ask for the next chunk when what is queued would run
  out before a reply can arrive (``delay`` ticks); a chunk replaces the queue from its first action
  still due, and ``n_action_steps + delay`` of its actions are kept, so the arm executes ``n_action_steps``
  of each chunk whatever the latency. At zero delay this is exactly ``robopolicy eval``'s loop.
- ``rtc`` (real-time chunking): replan, and each request says that its queued actions are committed
  (the ones that will run before the reply can arrive; at most ``delay``): the new chunk starts with
  them exactly (the heads' known actions), so switching to it is seamless rather than a jump to a plan
  made from an older observation. Its own first ``committed`` actions are the old queue's, so they
  are not counted as dropped.
- ``ensemble`` (temporal ensembling, ACT): ask at every tick when no request is in flight; the action at a
  step is the average of every chunk's prediction for it, weighted exp(-m * i), i = 0 the oldest.
"""
from __future__ import annotations

import numpy as np

from robopolicy.errors import ConfigError

STRATEGIES = ("replan", "ensemble", "rtc")


class Scheduler:
    def __init__(self, strategy: str, n_action_steps: int, ensemble_m: float = 0.01):
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        self.strategy, self.n_action_steps, self.m = strategy, n_action_steps, ensemble_m
        self.chunks: list[tuple[int, np.ndarray]] = []  # (first step, actions), oldest first
        self.dropped = 0  # actions that arrived after they were due

    def reset(self) -> None:
        self.chunks, self.dropped = [], 0

    def remaining(self, step: int) -> int:
        """Queued actions due from ``step`` on."""
        return max((t + len(a) - step for t, a in self.chunks), default=0)

    def needs_request(self, step: int, delay: int) -> bool:
        if self.strategy == "ensemble":
            return True
        return self.remaining(step) <= delay

    def committed(self, step: int, delay: int) -> int:
        """How many queued actions a request at ``step`` must keep (rtc only)."""
        return min(self.remaining(step), delay) if self.strategy == "rtc" else 0

    def merge(self, t: int, plan: np.ndarray, step: int, delay: int, committed: int = 0) -> None:
        """A chunk computed at step ``t`` (its ``plan``: actions due from t, the first ``committed`` of them
        the queue's own) arrives at ``step``."""
        keep = plan if self.strategy == "ensemble" else plan[: self.n_action_steps + delay]
        late = min(max(step - t, 0), len(keep))
        self.dropped += max(late - committed, 0)
        if self.strategy in ("replan", "rtc"):
            self.chunks = [(t, keep)]
        else:
            self.chunks.append((t, keep))
        self.chunks = [(c, a) for c, a in self.chunks if c + len(a) > step]

    def action(self, step: int) -> np.ndarray | None:
        """The action due at ``step`` (None: nothing is queued for it; the arm holds)."""
        rows = [a[step - t] for t, a in self.chunks if 0 <= step - t < len(a)]
        if not rows:
            return None
        if len(rows) == 1:
            return rows[0]
        w = np.exp(-self.m * np.arange(len(rows)))
        return (np.stack(rows) * (w / w.sum())[:, None]).sum(0).astype(np.float32)
