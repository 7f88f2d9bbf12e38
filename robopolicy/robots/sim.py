"""``sim:<task>``: a task of envs/ behind the ArmDriver interface (the same task code, not a fork).

Physics advances with the loop's clock: every control period that has passed since the last step is
stepped when the state is read, with the command due in that period, or a hold when there is none (no
command yet, or the last one's time-to-live ran out: the vendor-watchdog layer beneath the shield). On a
lockstep clock that is exactly one step per tick; on the wall clock a late loop sees the arm hold, as a
real arm would, instead of a frozen world.
"""
from __future__ import annotations

import numpy as np

from robopolicy.robots.driver import ArmState, hold_action


class SimArm:
    def __init__(self, task: str, clock, obs: str = "state", env_spec: dict | None = None,
                 control_hz: float | None = None):
        from robopolicy import envs

        self.spec = env_spec or envs.env_spec(task, obs)  # what rebuilds it (videos replay from it)
        self.env = envs.make_from_spec(self.spec)
        self.clock = clock
        self.action_semantics = tuple(self.env.action_semantics)
        self.action_low = np.asarray(self.env.action_space.low, np.float32)
        self.action_high = np.asarray(self.env.action_space.high, np.float32)
        self.max_step = np.asarray(self.env.max_step, np.float32)  # the task's, from its action scale
        self.observation_shapes = {k: tuple(space.shape) for k, space in self.env.observation_space.spaces.items()}
        sim = getattr(self.env, "sim", None)
        low, high = getattr(sim, "mocap_low", None), getattr(sim, "mocap_high", None)
        self.workspace = None if low is None else (np.asarray(low, np.float64), np.asarray(high, np.float64))
        self.period_ns = int(round(1e9 / (control_hz or self.env.control_hz)))
        self._cmd: tuple[np.ndarray, int, int] | None = None  # (action, due, expiry)
        self._last: np.ndarray | None = None  # the last action stepped (a hold keeps its gripper)
        self._stopped = False
        self.steps = 0
        self.executed: list[np.ndarray] = []  # what physics was stepped with, in order
        self.next_ns = 0
        self.state: ArmState | None = None

    def start_episode(self, seed: int | None = None) -> ArmState:
        obs, _ = self.env.reset(seed=seed)
        self._cmd, self._last, self._stopped, self.steps, self.executed = None, None, False, 0, []
        now = self.clock.now_ns()
        self.next_ns = now + self.period_ns  # the first step covers [now, now + period)
        self.state = ArmState(now, obs, self._hand(), self._setpoint())
        return self.state

    def restart_clock(self) -> None:
        """The episode starts now (after the first chunk arrived; the arm stood still meanwhile)."""
        self.next_ns = self.clock.now_ns() + self.period_ns
        self.state.t_ns = self.clock.now_ns()

    def _hand(self) -> np.ndarray | None:
        hand = getattr(self.env, "hand", None)
        return None if hand is None else np.asarray(hand, np.float64)

    def _setpoint(self) -> np.ndarray | None:
        """Meta-World's arm follows a mocap body welded to the hand: its position is the setpoint."""
        data = getattr(getattr(self.env, "sim", None), "data", None)
        return None if data is None or not len(data.mocap_pos) else np.array(data.mocap_pos[0], np.float64)

    def read_state(self) -> ArmState:
        now = self.clock.now_ns()
        while now >= self.next_ns and not self.state.done:
            self._step(self.next_ns - self.period_ns)
            self.next_ns += self.period_ns
        return self.state

    def _step(self, t_ns: int) -> None:
        action = None
        if self._cmd is not None and not self._stopped:
            cmd, due, expiry = self._cmd
            if due <= t_ns + self.period_ns // 2 and t_ns <= expiry:  # due in this period, still valid
                action, self._cmd = cmd, None
        if action is None:
            action = hold_action(self.action_semantics, self._last)
        obs, _, terminated, truncated, info = self.env.step(action)
        self._last = action
        self.steps += 1
        self.executed.append(np.asarray(action, np.float32))
        self.state = ArmState(t_ns + self.period_ns, obs, self._hand(), self._setpoint(),
                              bool(terminated or truncated), bool(info.get("success", False)))

    def command(self, action: np.ndarray, due_ns: int, ttl_ns: int) -> None:
        if not self._stopped:
            self._cmd = (np.asarray(action, np.float32), int(due_ns), int(due_ns) + int(ttl_ns))

    def hold(self) -> None:
        self._cmd = None

    def stop(self) -> None:
        self._cmd, self._stopped = None, True

    def close(self) -> None:
        self.env.close()
