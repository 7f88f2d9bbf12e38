"""The one interface every arm is driven through, the simulated one included.

A driver reads timestamped state (and the cameras the policy reads), takes non-blocking commands that
carry the time they are due and how long they stay valid, holds, stops, and closes. The control loop
only ever talks to a ``SafetyShield`` wrapped around a driver (robots/shield.py), so sim and real arms
are driven by the same loop, through the same checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class ArmState:
    t_ns: int  # acquisition time, on the loop's clock
    obs: dict[str, np.ndarray]  # the observation the policy reads (state vector, camera images)
    ee_pos: np.ndarray | None = None  # end-effector position (m), for the shield's workspace box
    ee_target: np.ndarray | None = None  # the position setpoint the arm's controller tracks (m), where known
    done: bool = False  # a simulated episode reached its end (time limit, termination)
    success: bool = False  # a simulated task's success flag (a real arm has none)
    info: dict = field(default_factory=dict)


class ArmDriver(Protocol):
    action_semantics: tuple[str, ...]  # what each action dimension is (ee_delta_x, ..., gripper)
    action_low: np.ndarray  # per dimension, the command bounds
    action_high: np.ndarray
    workspace: tuple[np.ndarray, np.ndarray] | None  # end-effector box (low, high), where one applies
    max_step: np.ndarray  # per dimension, the most one tick's command may move it (deltas: the step itself;
    # absolute dimensions, the gripper: the change from the last command); the shield enforces it
    observation_shapes: dict[str, tuple[int, ...]]  # what read_state().obs holds, checked against a policy's
    period_ns: int  # its control period: a policy trained at another rate is refused

    def start_episode(self, seed: int | None = None) -> ArmState:
        """Begin an episode (a sim resets to the seed's initial condition; a real arm is where it is)."""

    def restart_clock(self) -> None:
        """The episode's first tick is now (the loop waited for its first chunk; the arm stood still): a
        simulated arm starts its physics clock here, a real arm has nothing to do."""

    def read_state(self) -> ArmState:
        """The latest state, stamped when it was acquired."""

    def command(self, action: np.ndarray, due_ns: int, ttl_ns: int) -> None:
        """Execute ``action`` at ``due_ns``; past ``due_ns + ttl_ns`` it no longer applies. Never blocks."""

    def hold(self) -> None:
        """Stay where you are (end-effector deltas: zero, gripper kept)."""

    def stop(self) -> None:
        """Protective stop: no motion until the next episode."""

    def close(self) -> None:
        ...


def hold_action(semantics: tuple[str, ...], last: np.ndarray | None) -> np.ndarray:
    """The command that keeps an arm where it is: zero deltas, the gripper as last commanded."""
    out = np.zeros(len(semantics), np.float32)
    if last is not None:
        for i, name in enumerate(semantics):
            if not name.startswith("ee_delta") and not name.startswith("joint_delta"):
                out[i] = last[i]  # absolute dimensions (the gripper) keep their value
    return out
