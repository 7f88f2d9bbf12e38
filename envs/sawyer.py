"""Tasks on Meta-World's Sawyer scenes and controller, with one observation convention.

Observations are a dict: ``state`` (float32 vector) and, with ``obs="image"``, one uint8 HxWx3
upright image per camera, ``<camera>_image``. Actions are Meta-World's: end-effector delta xyz and
gripper effort, in [-1, 1]. Meta-World's own ``reset(seed)`` does not change the task variant
(object and goal positions), so ``reset(seed=s)`` here draws them from ``s`` itself: an episode is a
function of its seed alone, whatever ran before it in the process.
"""
from __future__ import annotations

import zlib
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from robopolicy.envs.rendering import Cameras

STEP_LIMIT_SAFETY = 10**6  # Meta-World raises past max_path_length; our TimeLimit is max_episode_steps


class SawyerTask(gym.Env):
    """Base of every Sawyer task: seeded reset, state + camera observations, success, time limit."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}
    scene: str = ""  # the Meta-World env whose scene and controller the task uses
    max_episode_steps: int = 500
    state_dim: int = 39
    action_dim: int = 4  # end-effector delta xyz + gripper
    # what each action dimension drives (a checkpoint carries it: a server tells a robot what it commands)
    action_semantics: tuple[str, ...] = ("ee_delta_x", "ee_delta_y", "ee_delta_z", "gripper")  # each in [-1, 1]
    default_camera: str = "corner2"
    control_hz: float = 80.0  # Meta-World: frame_skip 5 x 2.5 ms
    # per tick, the most a command may move the arm (the shield's step limit, from the action scale): Meta-World's
    # mocap moves the hand 1 cm per unit of delta per tick, at most one unit (0.8 m/s at 80 Hz, what the experts
    # command when far from their goal); the gripper's effort may swing from closed to open in one tick
    max_step: tuple[float, ...] = (1.0, 1.0, 1.0, 2.0)

    def __init__(self, obs: str = "state", image_size: int = 96, cameras: tuple[str, ...] | None = None,
                 render_mode: str | None = "rgb_array"):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if obs not in ("state", "image"):
            raise ValueError(f"obs must be 'state' or 'image', got {obs!r}")
        self.obs_mode, self.image_size = obs, int(image_size)
        self.camera_names = tuple(cameras or (self.default_camera,))
        self.render_mode = render_mode
        self.sim = ALL_V3_ENVIRONMENTS[self.scene]()
        self.sim.max_path_length = STEP_LIMIT_SAFETY
        self.sim._set_task_called = True  # we choose the variant ourselves, per episode seed
        self.sim._partially_observable = False
        # Meta-World clips every step's observation to a space cached while the goal was hidden: recompute it
        vars(self.sim).pop("sawyer_observation_space", None)
        self._cameras: Cameras | None = None
        space = {"state": spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32)}
        if obs == "image":
            for name in self.camera_names:
                space[f"{name}_image"] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(space)
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.t = 0
        self.episode_seed: int | None = None
        self.raw = np.zeros(39)

    # ---------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31 - 1))
        self.episode_seed = int(seed)
        sim = self.sim
        variant = self._variant_seed(self.episode_seed)
        sim._freeze_rand_vec, sim.seeded_rand_vec = False, True
        sim.seed(variant)  # Meta-World's variant draws come from this generator
        salt = zlib.crc32(type(self).__name__.encode())  # stable across processes, unlike hash()
        self._before_reset(np.random.default_rng([salt, variant]))
        self.raw, _ = sim.reset()
        self._after_reset()
        mujoco.mj_forward(sim.model, sim.data)  # positions of moved sites/objects, before the first render
        self.t = 0
        return self._observe(), {"seed": self.episode_seed, "success": False}

    def step(self, action) -> tuple[dict, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, np.float32).reshape(4), -1.0, 1.0)
        self.raw, _, _, _, info = self.sim.step(action)
        self.t += 1
        success = bool(self._success(info))
        outcome = self.outcome()
        info = {"success": success, **({"outcome": outcome} if outcome else {})}
        return self._observe(), float(success), success, self.t >= self.max_episode_steps, info

    def render(self) -> np.ndarray:
        return self._render()[f"{self.camera_names[0]}_image"]

    def close(self) -> None:
        if self._cameras is not None:
            self._cameras.close()
            self._cameras = None
        self.sim.close()

    # ----------------------------------------------------- for subclasses
    def _variant_seed(self, seed: int) -> int:
        """The seed of everything visible in an episode (tasks with a hidden variable split it off)."""
        return seed

    def _before_reset(self, rng: np.random.Generator) -> None:
        """Choose what the episode seed decides and Meta-World's reset reads (e.g. the hand's start)."""

    def _after_reset(self) -> None:
        """Place objects, cues, ... after Meta-World's reset."""

    def _success(self, info: dict) -> bool:
        return bool(info.get("success", False))

    def outcome(self) -> dict:
        """How the episode stands, in a few JSON scalars, for telling failures apart (``info["outcome"]``,
        kept in evaluation records): e.g. which side a memory task's robot went to. Empty: nothing to say."""
        return {}

    def _state(self) -> np.ndarray:
        return self.raw.astype(np.float32)

    # -------------------------------------------------------------- helpers
    @property
    def hand(self) -> np.ndarray:
        return self.raw[:3].copy()

    def _render(self) -> dict[str, np.ndarray]:
        if self._cameras is None:
            self._cameras = Cameras(self.sim.model, self.camera_names, self.image_size)
        return self._cameras.render(self.sim.data)

    def _observe(self) -> dict[str, np.ndarray]:
        obs = {"state": self._state()}
        if self.obs_mode == "image":
            obs.update(self._render())
        return obs

    def make_expert(self) -> Expert:
        raise NotImplementedError


class Expert:
    """A scripted demonstrator. It may read the task's privileged state (it is the teacher).
    ``decision_steps`` lists the steps where it acted on what only the past shows (memory tasks)."""

    def reset(self) -> None:
        self.decision_steps: list[int] = []

    def act(self, env: SawyerTask) -> np.ndarray:
        raise NotImplementedError


def move(hand: np.ndarray, target: np.ndarray, gripper: float, gain: float = 10.0) -> np.ndarray:
    """P-control of the end effector toward ``target`` (Meta-World moves 1 cm per unit action)."""
    return np.append(np.clip((np.asarray(target) - hand) * gain, -1.0, 1.0), gripper).astype(np.float32)


class MetaWorldTask(SawyerTask):
    """A Meta-World v3 task as Meta-World defines it (39-d goal-observable state, its success)."""

    policy_name: str = ""

    def make_expert(self) -> Expert:
        import metaworld.policies as policies

        return _MetaWorldExpert(getattr(policies, self.policy_name)())


class _MetaWorldExpert(Expert):
    def __init__(self, policy):
        self.policy = policy

    def act(self, env: SawyerTask) -> np.ndarray:
        return np.clip(self.policy.get_action(env.raw), -1.0, 1.0).astype(np.float32)


def metaworld_task(name: str, policy_name: str, max_steps: int) -> type[MetaWorldTask]:
    """The task class for one Meta-World environment."""
    cls_name = "".join(p.capitalize() for p in name.replace("-v3", "").split("-")) + "Task"
    return type(cls_name, (MetaWorldTask,), {"scene": name, "policy_name": policy_name,
                                             "max_episode_steps": max_steps, "__doc__": f"Meta-World {name}."})
