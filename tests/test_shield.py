"""The safety shield, one promise of its docstring per test, in-process, with a clock the test steps.

Each test checks its promise on the real shield and on broken variants of it (the shield with that one
protection removed or bent) and asserts that the promise holds on the real one only: a test that passed on
a broken shield would protect nothing. The process-level test (a killed server stops the arm) is in
test_serve.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from robopolicy.robots.driver import ArmState
from robopolicy.robots.shield import SafetyShield
from robopolicy.serve.clock import LockstepClock

P = 12_500_000  # one control period, ns (80 Hz)
TTL = 4 * P
SEMANTICS = ("ee_delta_x", "ee_delta_y", "ee_delta_z", "gripper")


class FakeArm:
    """A driver that records what reaches it; its end effector sits wherever the test puts it."""

    action_semantics = SEMANTICS
    action_low = np.array([-1, -1, -1, -1], np.float32)
    action_high = np.array([1, 1, 1, 1], np.float32)
    max_step = np.array([0.25, 0.25, 0.25, 0.5], np.float32)
    workspace = (np.array([-0.5, 0.3, 0.0]), np.array([0.5, 0.9, 0.3]))
    observation_shapes = {"state": (3,)}

    def __init__(self, clock):
        self.clock, self.ee = clock, np.array([0.0, 0.6, 0.15])
        self.sent: list[np.ndarray] = []
        self.holds = self.stops = 0

    def start_episode(self, seed=None):
        return self.read_state()

    def read_state(self):
        return ArmState(self.clock.now_ns(), {"state": self.ee.astype(np.float32)}, self.ee.copy())

    def command(self, action, due_ns, ttl_ns):
        self.sent.append(np.array(action))

    def hold(self):
        self.holds += 1

    def stop(self):
        self.stops += 1

    def close(self):
        pass


# ---------------------------------------------------------------- broken variants, one protection each
class NoBounds(SafetyShield):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.low[:], self.high[:] = -np.inf, np.inf


class NoStepLimit(SafetyShield):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.max_step[:] = np.inf


class GripperStepFromZero(SafetyShield):
    """Treats the gripper as a delta: its step is measured from 0, not from its last value."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._is_delta[:] = True


class AcceptsNonFinite(SafetyShield):
    def command(self, action, due_ns):
        return super().command(np.nan_to_num(np.asarray(action, np.float32), posinf=1.0, neginf=-1.0), due_ns)


class AcceptsWrongSize(SafetyShield):
    def command(self, action, due_ns):
        return super().command(np.resize(np.asarray(action, np.float32), self.low.shape), due_ns)


class NoWorkspace(SafetyShield):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.workspace = None


class WorkspaceWrongAxis(SafetyShield):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._delta_axes = self._delta_axes[::-1]


class WorkspaceEveryAxis(SafetyShield):
    """Zeroes all motion when one axis is out of the box (the arm could not back out along the others)."""

    def command(self, action, due_ns):
        low, high = self.workspace
        pos = self.state.ee_pos if self.state is not None else None
        if pos is not None and ((pos >= high) | (pos <= low)).any():
            action = np.asarray(action, np.float32).copy()
            action[self._delta_axes] = 0.0
        return super().command(action, due_ns)


class TTLNeverExpires(SafetyShield):
    def read_state(self):
        self.expires_ns = None
        return super().read_state()


class TTLTwoTicksLate(SafetyShield):
    def read_state(self):
        if self.expires_ns is not None and self.clock.now_ns() <= self.expires_ns + 2 * P:
            return self.driver.read_state()
        return super().read_state()


class StopUnlatchesOnCommand(SafetyShield):
    def command(self, action, due_ns):
        self.events.stop_reason = None
        return super().command(action, due_ns)


class CommandsAfterStop(SafetyShield):
    def command(self, action, due_ns):
        if self.stopped:
            self.driver.command(np.asarray(action, np.float32), due_ns, self.ttl_ns)
            return np.asarray(action, np.float32)
        return super().command(action, due_ns)


class ResetWithoutAck(SafetyShield):
    def reset(self, ack=False):
        super().reset(ack=True)


class EstopNotLatched(SafetyShield):
    def estop(self, reason="estop"):
        self.driver.stop()


def _shield(cls=SafetyShield, **kw):
    clock = LockstepClock()
    shield = cls(FakeArm(clock), clock, ttl_ns=TTL, **kw)
    shield.start_episode(0)
    shield.read_state()
    return shield, clock


def _variants(*broken):
    return pytest.mark.parametrize("cls", [SafetyShield, *broken],
                                   ids=["real", *[f"broken-{c.__name__}" for c in broken]])


def _holds(cls, check) -> None:
    """The promise holds on the real shield, and a broken variant breaks it."""
    try:
        check(cls)
    except (AssertionError, pytest.fail.Exception):  # pytest.raises that saw nothing raises the latter
        if cls is SafetyShield:
            raise
        return
    assert cls is SafetyShield, f"{cls.__name__} breaks the promise, yet the check passed"


# ---------------------------------------------------------------- the promises
@_variants(AcceptsNonFinite, AcceptsWrongSize)
def test_a_nan_inf_or_wrong_size_command_is_refused_and_the_arm_holds(cls):
    def check(cls):
        for bad in ([np.nan, 0, 0, 0], [0, np.inf, 0, 0], [0, 0, -np.inf, 0], [0.1, 0.1, 0.1], [0.1] * 5):
            shield, _ = _shield(cls)
            assert shield.command(np.array(bad, np.float32), 0) is None
            assert shield.driver.sent == [] and shield.driver.holds == 1 and shield.events.rejected == 1
            assert not shield.stopped  # a bad command holds; it does not stop the arm
    _holds(cls, check)


@_variants(NoBounds)
def test_each_dimension_is_clamped_to_the_drivers_bounds(cls):
    def check(cls):
        shield, _ = _shield(cls, max_step=10.0)  # bounds alone
        sent = shield.command(np.array([3.0, -2.0, 0.5, 7.0], np.float32), 0)
        assert np.array_equal(sent, [1.0, -1.0, 0.5, 1.0]) and np.array_equal(shield.driver.sent[-1], sent)
        assert shield.events.clamped == 1
        shield.command(np.array([0.5, -0.5, 0.5, 0.5], np.float32), P)  # inside: untouched, not counted
        assert np.array_equal(shield.driver.sent[-1], [0.5, -0.5, 0.5, 0.5]) and shield.events.clamped == 1
    _holds(cls, check)


@_variants(NoStepLimit, GripperStepFromZero)
def test_the_per_tick_step_limits_deltas_and_moves_the_gripper_from_its_last_value(cls):
    def check(cls):
        shield, _ = _shield(cls)  # the driver's declared step: 0.25 per delta axis, 0.5 for the gripper
        first = shield.command(np.array([0.9, -0.9, 0.1, 0.8], np.float32), 0)
        assert np.allclose(first, [0.25, -0.25, 0.1, 0.8])  # a delta is the step itself; no gripper value yet
        second = shield.command(np.array([0.9, 0.0, 0.0, -1.0], np.float32), P)
        assert np.allclose(second, [0.25, 0.0, 0.0, 0.3])  # the gripper moves at most 0.5 from its last 0.8
        third = shield.command(np.array([0.0, 0.0, 0.0, -1.0], np.float32), 2 * P)
        assert np.allclose(third, [0.0, 0.0, 0.0, -0.2])
        assert shield.events.clamped == 3
    _holds(cls, check)


@_variants(NoWorkspace, WorkspaceWrongAxis, WorkspaceEveryAxis)
def test_motion_out_of_the_workspace_box_is_zeroed_on_that_axis_only(cls):
    def check(cls):
        shield, _ = _shield(cls, max_step=1.0)
        shield.driver.ee = np.array([0.5, 0.6, 0.15])  # at the box's +x face
        shield.read_state()
        sent = shield.command(np.array([0.2, 0.2, -0.2, 0.5], np.float32), 0)
        assert np.allclose(sent, [0.0, 0.2, -0.2, 0.5]) and shield.events.workspace == 1
        back = shield.command(np.array([-0.2, 0.0, 0.0, 0.5], np.float32), P)  # back into the box: allowed
        assert np.allclose(back, [-0.2, 0.0, 0.0, 0.5]) and shield.events.workspace == 1
    _holds(cls, check)


@_variants(TTLNeverExpires, TTLTwoTicksLate, StopUnlatchesOnCommand)
def test_the_ttl_stops_the_arm_within_one_tick_of_expiring_and_the_stop_latches(cls):
    def check(cls):
        shield, clock = _shield(cls)
        shield.command(np.zeros(4, np.float32), 0)  # valid until 0 + TTL
        tick = 0
        while not shield.stopped and tick < 20:
            tick += 1
            clock.sleep_until(tick * P)
            shield.read_state()
        assert shield.stopped and shield.events.stop_reason == "ttl" and shield.driver.stops == 1
        assert shield.events.stopped_at_ns - TTL <= P  # the first tick past the expiry
        shield.command(np.zeros(4, np.float32), tick * P)  # a late command does not revive it
        assert shield.stopped and len(shield.driver.sent) == 1
        clock.sleep_until((tick + 10) * P)
        shield.read_state()
        assert shield.stopped
    _holds(cls, check)


@_variants(CommandsAfterStop, StopUnlatchesOnCommand)
def test_commands_after_a_stop_are_refused(cls):
    def check(cls):
        shield, _ = _shield(cls)
        shield.command(np.full(4, 0.1, np.float32), 0)
        shield.estop("operator")
        assert shield.command(np.full(4, 0.1, np.float32), P) is None
        assert len(shield.driver.sent) == 1 and shield.stopped
        with pytest.raises(RuntimeError, match="reset"):
            shield.start_episode(1)  # a new episode does not clear it either
    _holds(cls, check)


@_variants(ResetWithoutAck)
def test_clearing_a_stop_needs_an_explicit_acknowledgement(cls):
    def check(cls):
        shield, _ = _shield(cls)
        shield.estop()
        with pytest.raises(RuntimeError, match="ack=True"):
            shield.reset()
        assert shield.stopped
        shield.reset(ack=True)
        assert not shield.stopped and shield.command(np.zeros(4, np.float32), 0) is not None
    _holds(cls, check)


@_variants(EstopNotLatched)
def test_an_estop_stops_the_driver_and_latches(cls):
    def check(cls):
        shield, clock = _shield(cls)
        shield.estop("operator")
        assert shield.stopped and shield.events.stop_reason == "operator" and shield.driver.stops == 1
        clock.sleep_until(100 * P)
        shield.read_state()
        assert shield.stopped and shield.command(np.zeros(4, np.float32), 100 * P) is None
    _holds(cls, check)


def test_a_driver_without_a_declared_step_needs_one_given():
    clock = LockstepClock()
    arm = FakeArm(clock)
    arm.max_step = None
    with pytest.raises(ValueError, match="max_step"):
        SafetyShield(arm, clock)
    with pytest.raises(ValueError, match="positive"):
        SafetyShield(FakeArm(clock), clock, max_step=0.0)
    assert np.array_equal(SafetyShield(arm, clock, max_step=0.1).max_step, np.full(4, 0.1, np.float32))
