"""History-dependent tasks on Meta-World's Sawyer scenes: the right action depends on something
only the past shows. They are what long observation context and Past-Token Prediction exist for.

Each task declares
  hidden         what the past holds and the present does not (a per-seed variable, or a count),
  memory_span L  how many steps before the decision step the deciding information was last visible,
and its expert records the decision steps, so tests can show that two histories which differ only
in the hidden variable look the same at the decision step while the expert acts differently.

Per-seed hidden variables are ``seed % 2``; everything else an episode draws comes from ``seed // 2``,
so seeds 2k and 2k+1 differ only in the hidden variable.
"""
from __future__ import annotations

import numpy as np

from robopolicy.envs.sawyer import Expert, SawyerTask, move

OPEN, CLOSED = -1.0, 1.0


class MemoryTask(SawyerTask):
    memory_span: int = 0
    hidden_name: str = ""
    hidden_per_seed = True  # seeds 2k and 2k+1 differ only in it (else: it is a count within an episode)
    state_dim = 7  # hand xyz, gripper opening, object xyz: the current frame only

    def _variant_seed(self, seed: int) -> int:
        self.hidden = seed % 2
        return seed // 2

    def _state(self) -> np.ndarray:
        # Meta-World's 39-d observation also stacks the previous frame, a one-step memory, and the object's
        # orientation, which for the round puck only says how the grasp happened to turn it: both left out.
        return self.raw[:7].astype(np.float32)

    def _site(self, name: str) -> int:
        return self.sim.model.site(name).id

    def _show_cue(self, position: np.ndarray) -> None:
        """Meta-World's goal marker, turned into a green 5 cm ball (a dozen bright pixels at 96x96)."""
        goal = self._site("goal")
        self.sim.model.site_pos[goal] = position
        self.sim.model.site_size[goal] = 0.05
        self.sim.model.site_rgba[goal] = [0.1, 0.9, 0.1, 1.0]

    def _cue_state(self, position: np.ndarray, visible: bool) -> np.ndarray:
        """The state's cue slot: its position while it shows; with ``obs="image"`` always zeros, so an
        image policy has to see the cue in the pictures (the image memory task)."""
        return position if visible and self.obs_mode != "image" else np.zeros(3)

    def _hide_goal_marker(self) -> None:
        self.sim.model.site_rgba[self._site("goal"), 3] = 0.0


class CueReach(MemoryTask):
    """Reach the target (left or right) that a green cue marked during the first 8 steps only.

    The expert first goes to a fixed ready pose, identical for both targets, and decides at step 30:
    by then the cue has been gone for 23 steps.
    """

    scene = "reach-v3"
    max_episode_steps = 100
    hidden_name = "which target the cue marked (0 left, 1 right)"
    CUE_STEPS, DECIDE = 8, 30
    memory_span = DECIDE - (CUE_STEPS - 1)
    state_dim = 7 + 3  # + the cue's position while it shows (state observations only), zeros after
    TARGETS = np.array([[-0.12, 0.80, 0.15], [0.12, 0.80, 0.15]])
    READY = np.array([0.0, 0.68, 0.20])

    def _before_reset(self, rng):
        self.sim.hand_init_pos = np.array([0.0, 0.6, 0.2]) + rng.uniform(-0.03, 0.03, 3) * [1, 1, 0.5]

    def _after_reset(self):
        self.target = self.TARGETS[self.hidden]
        self._show_cue(self.target)

    def step(self, action):
        if self.t + 1 >= self.CUE_STEPS:  # the observation after this step no longer shows the cue
            self._hide_goal_marker()
        return super().step(action)

    @property
    def cue_visible(self) -> bool:
        return self.t < self.CUE_STEPS

    def _state(self):
        cue = self._cue_state(self.target, self.cue_visible)
        return np.concatenate([super()._state(), cue]).astype(np.float32)

    def _success(self, info):
        return float(np.linalg.norm(self.sim.tcp_center - self.target)) < 0.05

    def outcome(self):
        # which target the hand is nearer: a failure near the other one went the wrong way (memory), one
        # near neither did not get there (control)
        distance = np.linalg.norm(self.TARGETS - self.sim.tcp_center, axis=1)
        near = int(np.argmin(distance))
        return {"cue": int(self.hidden), "nearer": near, "distance": round(float(distance[near]), 3)}

    @staticmethod
    def failure_kind(outcome: dict) -> str:
        return "reached for the other target" if outcome["nearer"] != outcome["cue"] else "short of the cued target"

    @staticmethod
    def failure_distance(outcome: dict) -> float:
        """How far the tool centre ended from the target it went for (success: within 0.05 m)."""
        return outcome["distance"]

    def make_expert(self):
        return _CueReachExpert()


class _CueReachExpert(Expert):
    def reset(self):
        self.decision_steps = []

    def act(self, env: CueReach):
        if env.t == env.DECIDE:
            self.decision_steps.append(env.t)
        goal = env.READY if env.t < env.DECIDE else env.target
        return move(env.hand, goal, OPEN)


class CuePickPlace(MemoryTask):
    """Pick the puck up and place it on the goal (left or right) that a green cue marked while the puck
    was still on the table. The cue vanishes as the puck is lifted; the expert lifts it to a fixed
    waypoint, identical for both goals, holds, and only then turns toward the goal.
    """

    scene = "pick-place-v3"
    max_episode_steps = 300
    hidden_name = "which goal the cue marked (0 left, 1 right)"
    memory_span = 45
    state_dim = 7 + 3  # + the cue's position while it shows (state observations only), zeros after
    GOALS = np.array([[-0.15, 0.74], [0.15, 0.74]])
    WAYPOINT = np.array([0.0, 0.62, 0.24])
    HOLD = 10

    def _before_reset(self, rng):
        self.puck_xy = np.array([0.0, 0.62]) + rng.uniform(-0.05, 0.05, 2) * [1.0, 0.6]

    def _after_reset(self):
        z = float(self.sim.obj_init_pos[2])
        self.start = np.append(self.puck_xy, z)
        self.goal = np.append(self.GOALS[self.hidden], z)
        self.sim.obj_init_pos = self.start.copy()
        self.sim._set_obj_xyz(self.start)
        self._show_cue(self.goal)
        self.raw = self.sim._get_obs()
        self.cue_visible = True

    def step(self, action):
        out = super().step(action)
        if self.cue_visible and self.puck[2] > self.start[2] + 0.02:  # lifted: the cue goes
            self.cue_visible = False
            self._hide_goal_marker()
            out = (self._observe(),) + out[1:]
        return out

    @property
    def puck(self) -> np.ndarray:
        return self.raw[4:7].copy()

    def _state(self):
        cue = self._cue_state(self.goal, self.cue_visible)
        return np.concatenate([super()._state(), cue]).astype(np.float32)

    def _success(self, info):
        puck = self.puck
        placed = np.linalg.norm(puck[:2] - self.goal[:2]) < 0.05 and puck[2] < self.goal[2] + 0.01
        released = np.linalg.norm(self.sim.tcp_center - puck) > 0.06
        return bool(placed and released)

    def outcome(self):
        # lifted: the cue went (the memory part began); nearer: the goal the puck is nearer to
        distance = np.linalg.norm(self.GOALS - self.puck[:2], axis=1)
        near = int(np.argmin(distance))
        return {"cue": int(self.hidden), "lifted": not self.cue_visible, "nearer": near,
                "distance": round(float(distance[near]), 3)}

    @staticmethod
    def failure_kind(outcome: dict) -> str:
        if not outcome["lifted"]:
            return "never lifted"
        return "carried toward the other goal" if outcome["nearer"] != outcome["cue"] else "cued goal, not placed"

    @staticmethod
    def failure_distance(outcome: dict) -> float | None:
        """How far the lifted puck ended from the goal it went for (success: within 0.05 m); None if never lifted."""
        return outcome["distance"] if outcome["lifted"] else None

    def make_expert(self):
        return _CuePickPlaceExpert()


class _CuePickPlaceExpert(Expert):
    def reset(self):
        self.phase, self.since, self.decision_steps = "approach", 0, []

    def _next(self, phase):
        self.phase, self.since = phase, 0

    def act(self, env: CuePickPlace):
        hand, start, way, goal_xy = env.hand, env.start, env.WAYPOINT, env.goal
        self.since += 1
        if self.phase == "approach":
            goal, grip = start + [0, 0, 0.10], OPEN
            if np.linalg.norm((goal - hand)[:2]) < 0.008 and abs(goal[2] - hand[2]) < 0.02:
                self._next("descend")
        if self.phase == "descend":
            goal, grip = start, OPEN
            if abs(goal[2] - hand[2]) < 0.008 or self.since > 30:
                self._next("grasp")
        if self.phase == "grasp":
            goal, grip = start, CLOSED
            if self.since > 12:
                self._next("lift")
        if self.phase == "lift":
            goal, grip = way, CLOSED
            if np.linalg.norm(way - hand) < 0.01:
                self._next("hold")
        if self.phase == "hold":
            goal, grip = way, CLOSED
            if self.since > env.HOLD:
                self.decision_steps.append(env.t)
                self._next("carry")
        if self.phase == "carry":
            goal, grip = np.array([goal_xy[0], goal_xy[1], way[2]]), CLOSED
            if np.linalg.norm((goal - hand)[:2]) < 0.01:
                self._next("lower")
        if self.phase == "lower":
            goal, grip = goal_xy + [0, 0, 0.01], CLOSED
            if abs(goal[2] - hand[2]) < 0.01 or self.since > 40:
                self._next("release")
        if self.phase == "release":
            goal, grip = goal_xy + [0, 0, 0.01], OPEN
            if self.since > 10:
                self._next("retreat")
        if self.phase == "retreat":
            goal, grip = goal_xy + [0, 0, 0.15], OPEN
        return move(hand, goal, grip)


class ButtonTwice(MemoryTask):
    """Press the button exactly twice, then back away.

    Between presses the expert returns to the same hover pose and waits for the button to spring
    back, so the scene after the first press and after the second look the same: only the count,
    which lies in the past, says whether to press again or to leave. A third press fails the task.
    """

    scene = "button-press-v3"
    max_episode_steps = 300
    hidden_name = "how many times the button has been pressed (1 or 2), at the hover pose"
    memory_span = 80
    hidden_per_seed = False
    SETTLE = 20
    PRESSED, RELEASED = -0.04, -0.005  # button joint travel (m): 0 at rest, -0.06 fully in

    def _variant_seed(self, seed):
        return seed  # the hidden variable is the count, not part of the seed

    def _after_reset(self):
        self.button0 = self.raw[4:7].copy()
        self.hover = self.button0 + [0.0, -0.08, -0.07]
        self.presses, self._down, self.hidden = 0, False, 0

    @property
    def travel(self) -> float:
        return float(self.sim.data.joint("btnbox_joint").qpos[0])

    def step(self, action):
        out = super().step(action)
        if not self._down and self.travel < self.PRESSED:
            self._down, self.presses = True, self.presses + 1
        elif self._down and self.travel > self.RELEASED:
            self._down = False
        self.hidden = self.presses
        return out

    def _success(self, info):
        away = self.hand[1] < self.hover[1] - 0.1
        return bool(self.presses == 2 and not self._down and away)

    def outcome(self):
        return {"presses": int(self.presses), "away": bool(self.hand[1] < self.hover[1] - 0.1)}

    @staticmethod
    def failure_kind(outcome: dict) -> str:
        n = outcome["presses"]
        return {0: "never pressed", 1: "pressed once", 2: "pressed twice, did not leave"}.get(n, "pressed 3+ times")

    def make_expert(self):
        return _ButtonTwiceExpert()


class _ButtonTwiceExpert(Expert):
    def reset(self):
        self.phase, self.since, self.decision_steps = "approach", 0, []

    def act(self, env: ButtonTwice):
        hand, hover = env.hand, env.hover
        self.since += 1
        if self.phase == "approach" and np.linalg.norm(hover - hand) < 0.01:
            self.phase, self.since = "settle", 0
        if self.phase == "settle" and self.since > env.SETTLE and env.travel > -0.001:
            if env.presses >= 1:
                self.decision_steps.append(env.t)
            self.phase, self.since = ("press" if env.presses < 2 else "leave"), 0
        if self.phase == "press" and env._down:
            self.phase, self.since = "return", 0
        if self.phase == "return" and np.linalg.norm(hover - hand) < 0.01:
            self.phase, self.since = "settle", 0
        goal = {"approach": hover, "settle": hover, "return": hover, "press": env.button0 + [0, 0.02, -0.07],
                "leave": hover + [0, -0.15, 0.08]}[self.phase]
        return move(hand, goal, OPEN, gain=10.0)
