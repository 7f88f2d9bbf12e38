"""robopolicy.envs: MuJoCo tasks with scripted experts, registered with gymnasium as robopolicy/<name>.

    from robopolicy import envs
    env = envs.make("cue-reach", obs="image")   # or gymnasium.make("robopolicy/cue-reach", obs="image").unwrapped
    obs, info = env.reset(seed=0)
    expert = env.make_expert(); expert.reset()  # the expert reads the task's privileged state: pass the task
    obs, reward, terminated, truncated, info = env.step(expert.act(env))

Installed from the top-level envs/ folder under the robopolicy namespace.
"""
import os

# Headless rendering: mujoco picks its GL backend when first imported, so this runs before any submodule.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from robopolicy.envs.tasks import (  # noqa: E402
                                   CONTEXT_STRIDE,
                                   EVAL_SEED_START,
                                   TASKS,
                                   Task,
                                   collection_seeds,
                                   env_spec,
                                   eval_seeds,
                                   get,
                                   make,
                                   make_from_spec,
                                   register,
                                   task_card,
                                   worker_seeds,
)

register()

__all__ = ["CONTEXT_STRIDE", "EVAL_SEED_START", "TASKS", "Task", "collection_seeds", "env_spec", "eval_seeds", "get",
           "make", "make_from_spec", "register", "task_card",
           "worker_seeds"]
