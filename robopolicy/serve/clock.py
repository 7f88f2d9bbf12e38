"""Clocks. The control loop never calls ``time`` itself: a wall clock runs real arms (and sims in real
time), a lockstep clock runs sims deterministically (tests, the latency x strategy table), where time
moves only when the loop sleeps and a reply "arrives" when the simulated latency says it does."""
from __future__ import annotations

import time


class WallClock:
    lockstep = False  # what `run` reports (the loop itself asks the clock's mailbox, never this)

    def __init__(self, spin_ns: int = 1_000_000):
        self.spin_ns = spin_ns  # the last stretch before a deadline is spun, not slept (sleep overshoots)

    @staticmethod
    def now_ns() -> int:
        return time.monotonic_ns()

    def mailbox(self, link, period_ns: int, latency_ns: int = 0, window: int = 20) -> Mailbox:
        return WallMailbox(link, self, period_ns, latency_ns, window)

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

    def mailbox(self, link, period_ns: int, latency_ns: int = 0, window: int = 20) -> Mailbox:
        return LockstepMailbox(link, self, period_ns, latency_ns, window)


class Mailbox:
    """When a reply counts as arrived, and how many ticks the loop expects a request to take: what differs
    between the clocks, kept here so that the loop has no branch on the clock's kind. ``clock.mailbox(link,
    ...)`` makes the one that fits. One request is in flight at a time (``send`` replaces it)."""

    measures_latency = True  # round trips are real (the loop's warm-up probes them before the first episode)

    def __init__(self, link, clock, period_ns: int, latency_ns: int, window: int):
        self.link, self.clock, self.period_ns, self.latency_ns, self.window = link, clock, period_ns, latency_ns, window
        self.pending: tuple[int, int, int] | None = None  # (id, sent, visible from)
        self.round_trips: list[int] = []  # ns
        self.superseded = 0  # replies to a request that had been superseded (never executed)
        self._inbox: dict | None = None  # the pending request's reply, arrived, waiting out the injected latency

    def send(self, msg: dict) -> None:
        now = self.clock.now_ns()
        self.pending = (msg["id"], now, now + self.latency_ns)
        self._inbox = None  # a reply held back for an earlier request never answers this one
        self.link.submit(msg)

    def wait(self, timeout_s: float, measure: bool = True) -> dict | None:
        """The pending request's reply, waited for (the episode's first chunk: the arm stands still meanwhile);
        ``measure``: its round trip counts toward the delay estimate (not the warm-up's)."""
        rid, sent, _ = self.pending
        reply = self.link.wait(rid, timeout_s)
        if reply is not None:  # None: still pending (the caller may give it up: ``lose``)
            self.pending = None
            if measure:
                self._arrived(self.clock.now_ns(), sent)
        return reply

    def lose(self) -> None:
        """Give up the pending request (the link is gone, or its reply never came)."""
        self.pending, self._inbox = None, None


class WallMailbox(Mailbox):
    """The wall clock: replies arrive when the link's thread receives them, and count from the injected
    latency on at the earliest; the delay estimate is the largest recent round trip."""

    def receive(self, timeout_s: float) -> dict | None:
        for r in self.link.replies():
            if self.pending is not None and r.get("id") == self.pending[0]:
                self._inbox = r
            else:
                self.superseded += 1
        if self.pending is None or self._inbox is None or self.clock.now_ns() < self.pending[2]:
            return None
        reply, self._inbox = self._inbox, None
        _, sent, visible = self.pending
        self.pending = None
        self._arrived(max(reply["arrived_ns"], visible), sent)
        return reply

    def _arrived(self, at_ns: int, sent_ns: int) -> None:
        self.round_trips.append(at_ns - sent_ns)

    def delay(self) -> int:
        recent = self.round_trips[-self.window:]
        return -(-max(recent) // self.period_ns) if recent else 1


class LockstepMailbox(Mailbox):
    """Simulated time: a reply is there exactly the injected latency after its request (waited for, since no
    time passes meanwhile), so runs are deterministic; the delay is that latency in ticks."""

    measures_latency = False

    def receive(self, timeout_s: float) -> dict | None:
        if self.pending is None or self.clock.now_ns() < self.pending[2]:
            return None
        reply = self.wait(timeout_s)
        if reply is None:
            self.lose()  # it was due now and did not come within the timeout: it will not
        return reply

    def _arrived(self, at_ns: int, sent_ns: int) -> None:
        pass  # simulated: nothing measured

    def delay(self) -> int:
        return -(-self.latency_ns // self.period_ns)
