"""The safety shield: every command to every arm passes here, the simulated arm's too (so CI tests it).

- NaN or inf in a command: refused, the arm holds, the fault is counted.
- Each dimension clamped to the driver's bounds and to a per-tick step (``max_step``: the driver's own, which it
  declares from its action scale or calibration, unless one is given).
- End-effector deltas that would leave the workspace box are zeroed on the axis that would leave it.
- A policy command's time-to-live: once the last one expired (the server is gone and the queue ran out),
  the arm is stopped within one tick, and the stop is latched.
- An e-stop (``estop()``, a TTL expiry, a driver fault) latches: nothing moves until ``reset(ack=True)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robopolicy.robots.driver import ArmState


@dataclass
class ShieldEvents:
    rejected: int = 0  # commands with NaN/inf
    clamped: int = 0  # commands changed by the bounds or the per-tick step
    workspace: int = 0  # commands whose motion out of the box was zeroed
    holds: int = 0
    stop_reason: str | None = None
    stopped_at_ns: int | None = None
    log: list[str] = field(default_factory=list)


class SafetyShield:
    def __init__(self, driver, clock, max_step: np.ndarray | float | None = None, ttl_ns: int = 500_000_000,
                 workspace: tuple[np.ndarray, np.ndarray] | None = None):
        self.driver, self.clock, self.ttl_ns = driver, clock, int(ttl_ns)
        n = len(driver.action_semantics)
        self.low, self.high = np.asarray(driver.action_low, np.float32), np.asarray(driver.action_high, np.float32)
        if max_step is None:
            max_step = getattr(driver, "max_step", None)
            if max_step is None:
                raise ValueError("the driver declares no per-tick step (max_step): pass one")
        max_step = np.asarray(max_step, np.float32)
        if max_step.size not in (1, n):
            raise ValueError(f"max_step has {max_step.size} values; give one, or one per action dimension ({n}: "
                             f"{', '.join(driver.action_semantics)})")
        self.max_step = np.broadcast_to(max_step.reshape(-1)[0] if max_step.size == 1 else max_step, (n,)).copy()
        if not (self.max_step > 0).all():
            raise ValueError(f"max_step must be positive, got {self.max_step.tolist()}")
        self.workspace = workspace if workspace is not None else getattr(driver, "workspace", None)
        self._delta_axes = [i for i, s in enumerate(driver.action_semantics) if s in ("ee_delta_x", "ee_delta_y",
                                                                                        "ee_delta_z")]
        self._is_delta = np.array([s.startswith(("ee_delta", "joint_delta")) for s in driver.action_semantics])
        self._last: np.ndarray | None = None
        self.events = ShieldEvents()
        self.expires_ns: int | None = None  # when the last policy command stops being valid
        self.state: ArmState | None = None

    @property
    def action_semantics(self):
        return self.driver.action_semantics

    @property
    def observation_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.driver.observation_shapes

    @property
    def period_ns(self) -> int:
        return self.driver.period_ns

    def restart_clock(self) -> None:
        self.driver.restart_clock()

    @property
    def stopped(self) -> bool:
        return self.events.stop_reason is not None

    def start_episode(self, seed: int | None = None) -> ArmState:
        if self.stopped:
            raise RuntimeError(f"the arm is stopped ({self.events.stop_reason}): reset(ack=True) first")
        self.expires_ns, self._last = None, None
        self.state = self.driver.start_episode(seed)
        return self.state

    def read_state(self) -> ArmState:
        self.state = self.driver.read_state()
        now = self.clock.now_ns()
        if not self.stopped and self.expires_ns is not None and now > self.expires_ns:
            self._stop("ttl", now)  # no valid policy command any more: the loop or its server is gone
        return self.state

    def command(self, action: np.ndarray, due_ns: int) -> np.ndarray | None:
        """Send a policy action due at ``due_ns``; returns what was sent (None: refused, the arm holds)."""
        if self.stopped:
            return None
        action = np.asarray(action, np.float32)
        if action.shape != self.low.shape or not np.isfinite(action).all():
            self.events.rejected += 1
            self.events.log.append(f"refused a command {action.shape} with NaN/inf or the wrong size")
            self.hold()
            return None
        safe = np.clip(action, self.low, self.high)
        # per tick: a delta is the step itself; an absolute dimension (the gripper) moves from its last value
        last = self._last if self._last is not None else safe
        step_of = np.where(self._is_delta, 0.0, last)
        safe = np.clip(safe, step_of - self.max_step, step_of + self.max_step).astype(np.float32)
        if not np.array_equal(safe, action):
            self.events.clamped += 1
        if self.workspace is not None and self.state is not None and self.state.ee_pos is not None:
            low, high = self.workspace
            for axis, i in enumerate(self._delta_axes):
                pos = self.state.ee_pos[axis]
                if (pos >= high[axis] and safe[i] > 0) or (pos <= low[axis] and safe[i] < 0):
                    safe[i] = 0.0
                    self.events.workspace += 1
        self.driver.command(safe, due_ns, self.ttl_ns)
        self._last = safe
        self.expires_ns = int(due_ns) + self.ttl_ns
        return safe

    def hold(self) -> None:
        self.events.holds += 1
        self.driver.hold()

    def estop(self, reason: str = "estop") -> None:
        self._stop(reason, self.clock.now_ns())

    def _stop(self, reason: str, now: int) -> None:
        self.events.stop_reason, self.events.stopped_at_ns = reason, now
        self.events.log.append(f"stopped: {reason}")
        self.driver.stop()

    def reset(self, ack: bool = False) -> None:
        """Clear a latched stop: an explicit operator acknowledgement, never automatic."""
        if not ack:
            raise RuntimeError("clearing a stop needs an explicit acknowledgement: reset(ack=True)")
        self.events.stop_reason = self.events.stopped_at_ns = None
        self.expires_ns = None

    def close(self) -> None:
        self.driver.close()
