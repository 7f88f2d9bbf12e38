"""robosuite Lift, built with ``robosuite.make`` from a robomimic-style env spec.

robomimic stores how to rebuild its environment in ``env_args`` (``env_name``, ``env_kwargs``);
``LiftTask(env_args=...)`` takes exactly that, so the env of an imported robomimic file rebuilds
here. (robomimic 0.3.0's own wrapper imports the retired ``mujoco_py``; robosuite itself does not.)
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from robopolicy.envs.sawyer import Expert

# robomimic's low-dim observation keys for Lift, concatenated into "state" in this order
STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object-state")
# ... and each also under the name a robomimic file gives it, so a policy trained on an imported robomimic
# store finds its keys here: (robomimic name, robosuite name, size)
ROBOMIMIC_KEYS = (("robot0_eef_pos", "robot0_eef_pos", 3), ("robot0_eef_quat", "robot0_eef_quat", 4),
                  ("robot0_gripper_qpos", "robot0_gripper_qpos", 2), ("object", "object-state", 10))
DEFAULT_ENV_ARGS = {"env_name": "Lift", "type": 1,
                    "env_kwargs": {"robots": ["Panda"], "control_freq": 20, "reward_shaping": False,
                                   "use_object_obs": True}}
# what robopolicy decides, whatever the spec says: no onscreen window, our own time limit, our cameras
_OWN_KWARGS = ("has_renderer", "has_offscreen_renderer", "use_camera_obs", "camera_names", "camera_heights",
               "camera_widths", "ignore_done", "horizon", "seed", "hard_reset", "camera_depths")


class LiftTask(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    max_episode_steps = 150
    state_dim = 3 + 4 + 2 + 10
    action_dim = 7  # OSC_POSE deltas (6) + gripper
    action_semantics = ("ee_delta_x", "ee_delta_y", "ee_delta_z", "ee_delta_roll", "ee_delta_pitch", "ee_delta_yaw",
                        "gripper")  # OSC_POSE, each in [-1, 1] (scaled to 0.05 m / 0.5 rad); gripper 1 closes
    default_camera = "agentview"
    control_hz = 20.0  # robomimic's Lift; a spec's control_freq overrides it
    # per tick, the most a command may move the arm (the shield's step limit): OSC_POSE scales one unit to 0.05 m
    # (1 m/s at 20 Hz) or 0.5 rad, at most one unit; the gripper may swing from open to closed in one tick
    max_step = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0)

    def __init__(self, obs: str = "state", image_size: int = 84, cameras: tuple[str, ...] | None = None,
                 env_args: dict | None = None, render_mode: str | None = "rgb_array", robomimic_keys: bool = False):
        """``robomimic_keys``: also observe each low-dim key under a robomimic file's name (an env rebuilt
        from an imported file's spec does, so a policy trained on that store finds its keys)."""
        import robosuite

        if obs not in ("state", "image"):
            raise ValueError(f"obs must be 'state' or 'image', got {obs!r}")
        self.env_args = env_args or DEFAULT_ENV_ARGS
        self.obs_mode, self.image_size = obs, int(image_size)
        self.camera_names = tuple(cameras or (self.default_camera,))
        self.render_mode = render_mode
        kwargs = {k: v for k, v in self.env_args.get("env_kwargs", {}).items() if k not in _OWN_KWARGS}
        kwargs = _upgrade_controller_config(kwargs)
        images = obs == "image"
        self.sim_env = robosuite.make(
            self.env_args["env_name"], **kwargs, has_renderer=False, has_offscreen_renderer=images,
            use_camera_obs=images, camera_names=list(self.camera_names), camera_heights=self.image_size,
            camera_widths=self.image_size, ignore_done=True, hard_reset=False,
            seed=0)  # the model (Lift draws its cube size when building it) is the same in every env
        self.control_hz = float(self.sim_env.control_freq)
        space = {"state": spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32)}
        if robomimic_keys:
            space.update({name: spaces.Box(-np.inf, np.inf, (n,), np.float32) for name, _, n in ROBOMIMIC_KEYS})
        if images:
            for name in self.camera_names:
                space[f"{name}_image"] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(space)
        low, high = self.sim_env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32))
        self.t, self.raw, self.episode_seed = 0, {}, None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31 - 1))
        self.episode_seed = int(seed)
        rng = np.random.default_rng(self.episode_seed)
        self.sim_env.rng = rng  # cube placement and the robot's initial joint noise draw from here
        if self.sim_env.placement_initializer is not None:
            self.sim_env.placement_initializer.rng = rng
        self._claim_gl()
        self.raw = self.sim_env.reset()
        self.t = 0
        self.z0 = float(self.raw["cube_pos"][2])
        return self._observe(), {"seed": self.episode_seed, "success": False}

    def step(self, action) -> tuple[dict, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, np.float32), self.action_space.low, self.action_space.high)
        self._claim_gl()
        self.raw, _, _, _ = self.sim_env.step(action)
        self.t += 1
        success = bool(self.sim_env._check_success())
        return self._observe(), float(success), success, self.t >= self.max_episode_steps, {"success": success}

    def _claim_gl(self) -> None:
        """robosuite renders into whatever GL context is current without making its own current: with any
        other renderer in the process (a Meta-World task, say) its camera images would come out black."""
        context = getattr(self.sim_env.sim, "_render_context_offscreen", None)
        if context is not None:
            context.gl_ctx.make_current()

    def _observe(self) -> dict[str, np.ndarray]:
        obs = {"state": np.concatenate([np.ravel(self.raw[k]) for k in STATE_KEYS]).astype(np.float32)}
        if "object" in self.observation_space.spaces:
            obs.update({name: np.asarray(self.raw[key], np.float32) for name, key, _ in ROBOMIMIC_KEYS})
        for name in self.camera_names if self.obs_mode == "image" else ():
            obs[f"{name}_image"] = np.ascontiguousarray(self.raw[f"{name}_image"][::-1])  # OpenGL rows: bottom-up
        return obs

    def render(self) -> np.ndarray:
        return self._observe()[f"{self.camera_names[0]}_image"]

    def close(self) -> None:
        self.sim_env.close()

    def make_expert(self) -> Expert:
        return _LiftExpert()


def _upgrade_controller_config(kwargs: dict) -> dict:
    """robomimic files keep robosuite 1.4's arm-only controller config ({"type": "OSC_POSE", ...});
    robosuite 1.5 wants a composite one with the arm config inside."""
    from robosuite.controllers.composite.composite_controller_factory import (
        is_part_controller_config,
        refactor_composite_controller_config,
    )

    config = kwargs.get("controller_configs")
    if config is None or not is_part_controller_config(config):
        return kwargs
    robots = kwargs.get("robots", ["Panda"])
    robot = robots[0] if isinstance(robots, (list, tuple)) else robots
    return {**kwargs, "controller_configs": refactor_composite_controller_config(config, robot, ["right"])}


class _LiftExpert(Expert):
    """Above the cube, down, close, up: operational-space deltas from a P-controller."""

    def reset(self):
        self.phase, self.since, self.decision_steps = "above", 0, []

    def act(self, env: LiftTask) -> np.ndarray:
        eef, cube = env.raw["robot0_eef_pos"], env.raw["cube_pos"]
        self.since += 1
        if self.phase == "above":
            target, grip = cube + [0, 0, 0.10], -1.0
            if np.linalg.norm((target - eef)[:2]) < 0.01 and abs(target[2] - eef[2]) < 0.02:
                self.phase, self.since = "down", 0
        if self.phase == "down":
            target, grip = cube + [0, 0, -0.005], -1.0
            if np.linalg.norm(target - eef) < 0.012 or self.since > 40:
                self.phase, self.since = "close", 0
        if self.phase == "close":
            target, grip = cube + [0, 0, -0.005], 1.0
            if self.since >= 10:
                self.phase, self.since = "up", 0
        if self.phase == "up":
            target, grip = np.array([eef[0], eef[1], env.z0 + 0.20]), 1.0
        action = np.zeros(env.action_space.shape, np.float32)
        action[:3] = np.clip((target - eef) / 0.05, -1.0, 1.0)
        action[-1] = grip
        return action
