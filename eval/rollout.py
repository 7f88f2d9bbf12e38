"""A minimal closed-loop rollout: a policy acting in a task, chunk by chunk (the eval suites build on it).

The observation window is To frames ``stride`` steps apart, the first observation repeated until the
history fills (as training windows pad); Ta actions of each chunk run before the next is sampled.
"""
from __future__ import annotations

import numpy as np
import torch


def rollout(policy, env, seed: int, generator: torch.Generator | None = None) -> bool:
    cfg = policy.cfg.data
    obs, _ = env.reset(seed=seed)
    history, queue, info = [obs], [], {"success": False}
    while True:
        if not queue:
            last = len(history) - 1
            frames = [history[max(last - (cfg.n_obs - 1 - j) * cfg.stride, 0)] for j in range(cfg.n_obs)]
            window = {k: np.stack([f[k] for f in frames]) for k in policy.obs_keys}
            queue = list(policy.act(window, generator=generator, t0=last).actions)
        obs, _, terminated, truncated, info = env.step(queue.pop(0))
        history.append(obs)
        if terminated or truncated:
            return bool(info["success"])


def success_rate(policy, task: str, seeds, obs: str = "state", image_size: int | None = None) -> float:
    from robopolicy import envs

    kwargs = {"image_size": image_size} if image_size else {}
    env = envs.make(task, obs=obs, **kwargs)
    try:
        results = [rollout(policy, env, int(s), torch.Generator().manual_seed(int(s))) for s in seeds]
    finally:
        env.close()
    return float(np.mean(results))
