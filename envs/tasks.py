"""The task suite: one table of tasks, how to build one, and which seeds are whose.

Seeds: an episode's initial condition is a function of its seed alone. Collection uses seeds below
EVAL_SEED_START and evaluation seeds from it up, so no evaluation episode was ever a demonstration,
and parallel workers take disjoint slices of one seed range, so none repeats an episode.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym

from robopolicy.envs import memory
from robopolicy.envs.lift import DEFAULT_ENV_ARGS, LiftTask  # robosuite itself loads only when Lift is built
from robopolicy.envs.sawyer import metaworld_task
from robopolicy.errors import ConfigError

EVAL_SEED_START = 1_000_000_000
CONTEXT_STRIDE = 6  # the shipped long context, To=16 frames 6 steps apart, spans 90 steps: every L fits


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "metaworld", "memory" or "robosuite"
    factory: type
    description: str
    defaults: dict = field(default_factory=dict)  # constructor defaults (image size, cameras)

    @property
    def max_episode_steps(self) -> int:
        return self.factory.max_episode_steps

    @property
    def memory_span(self) -> int | None:
        return getattr(self.factory, "memory_span", None)

    def make(self, **kwargs) -> gym.Env:
        return self.factory(**{**self.defaults, **kwargs})


def _metaworld(name: str, policy: str, steps: int, what: str) -> Task:
    return Task(name.removesuffix("-v3"), "metaworld", metaworld_task(name, policy, steps), what)


TASKS: dict[str, Task] = {t.name: t for t in [
    _metaworld("reach-v3", "SawyerReachV3Policy", 150, "move the gripper to a goal"),
    _metaworld("push-v3", "SawyerPushV3Policy", 250, "push a puck to a goal"),
    _metaworld("pick-place-v3", "SawyerPickPlaceV3Policy", 250, "pick a puck up and place it at a goal"),
    _metaworld("drawer-open-v3", "SawyerDrawerOpenV3Policy", 250, "pull a drawer open"),
    _metaworld("door-open-v3", "SawyerDoorOpenV3Policy", 250, "open a door by its handle"),
    _metaworld("button-press-v3", "SawyerButtonPressV3Policy", 150, "press a button"),
    _metaworld("peg-insert-side-v3", "SawyerPegInsertionSideV3Policy", 300, "insert a peg sideways into a hole"),
    _metaworld("assembly-v3", "SawyerAssemblyV3Policy", 300, "put a ring onto a peg"),
    Task("cue-reach", "memory", memory.CueReach, "reach the target a cue marked in the first 8 steps"),
    Task("cue-pick-place", "memory", memory.CuePickPlace,
         "place a puck on the goal a cue marked until the puck was lifted"),
    Task("button-twice", "memory", memory.ButtonTwice, "press a button exactly twice, then back away"),
]}


TASKS["lift"] = Task("lift", "robosuite", LiftTask, "lift a cube (robosuite Panda, built from a robomimic env spec)",
                     {"image_size": 84})


def get(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; `robopolicy tasks` lists them: {', '.join(TASKS)}")
    return TASKS[name]


def make(name: str, obs: str = "state", **kwargs) -> gym.Env:
    return get(name).make(obs=obs, **kwargs)


def env_spec(name: str, obs: str, image_size: int | None = None) -> dict:
    """What a demo store keeps so evaluation can rebuild the task exactly."""
    task = get(name)
    spec = {"type": "robopolicy", "task": name, "obs": obs,
            "image_size": int(image_size or task.defaults.get("image_size", 96))}
    if task.kind == "robosuite":
        spec["env_args"] = DEFAULT_ENV_ARGS
    return spec


def make_from_spec(spec: dict) -> gym.Env:
    """Rebuild the env a store was collected in (ours, or a robomimic file's robosuite env)."""
    if spec.get("type") == "robomimic":
        kwargs = spec["env_args"].get("env_kwargs", {})
        if not kwargs.get("use_camera_obs"):
            return LiftTask(obs="state", env_args=spec["env_args"], robomimic_keys=True)
        cameras = kwargs.get("camera_names", ["agentview"])
        return LiftTask(obs="image", env_args=spec["env_args"], image_size=kwargs.get("camera_heights", 84),
                        cameras=tuple([cameras] if isinstance(cameras, str) else cameras), robomimic_keys=True)
    kwargs = {"image_size": spec["image_size"]}
    if "env_args" in spec:
        kwargs["env_args"] = spec["env_args"]
    return make(spec["task"], obs=spec["obs"], **kwargs)


def task_card(spec: dict | None, fps: float | None = None) -> dict | None:
    """What a checkpoint carries about where it was trained: the env spec of its store, the control rate
    and what each action dimension means. None when the store names no env (a user's own data)."""
    if not spec:
        return None
    if spec.get("type") == "robomimic":  # robosuite tasks are ours in lower case ("Lift" is "lift")
        factory, name = LiftTask, str(spec.get("env_args", {}).get("env_name", "")).lower()
        hz = spec.get("env_args", {}).get("env_kwargs", {}).get("control_freq", factory.control_hz)
    elif spec.get("type") == "robopolicy" and spec.get("task") in TASKS:
        factory, name = get(spec["task"]).factory, spec["task"]
        hz = factory.control_hz
    else:
        return {"env_spec": dict(spec), "task": None, "control_hz": fps, "action_semantics": None}
    return {"env_spec": dict(spec), "task": name, "control_hz": float(hz),
            "action_semantics": list(factory.action_semantics)}


def collection_seeds(start: int, count: int) -> range:
    if start < 0 or start + count > EVAL_SEED_START:
        raise ConfigError(f"collection seeds must lie in [0, {EVAL_SEED_START}) (evaluation seeds start there); "
                          f"got {start}..{start + count - 1}")
    return range(start, start + count)


def eval_seeds(count: int, offset: int = 0) -> range:
    return range(EVAL_SEED_START + offset, EVAL_SEED_START + offset + count)


def worker_seeds(seeds: range, worker: int, n_workers: int) -> range:
    """Worker ``worker``'s disjoint share of ``seeds``."""
    return seeds[worker::n_workers]


def register() -> None:
    """Register every task with gymnasium as ``robopolicy/<name>``."""
    for name in TASKS:
        env_id = f"robopolicy/{name}"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=make, kwargs={"name": name}, disable_env_checker=True)
