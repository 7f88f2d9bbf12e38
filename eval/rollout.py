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
    history, executed, queue, info = [obs], [], [], {"success": False}
    # before the first action, a policy fed its executed actions sees the middle of the action range
    neutral = policy.normalizer.unnormalize(cfg.action_key, np.zeros(policy.action_dim, np.float32))
    while True:
        if not queue:
            last = len(history) - 1
            frames = [max(last - (cfg.n_obs - 1 - j) * cfg.stride, 0) for j in range(cfg.n_obs)]
            window = {k: np.stack([history[f][k] for f in frames]) for k in policy.obs_keys}
            before = np.stack([executed[f - 1] if f >= 1 else neutral for f in frames])  # the action before each
            queue = list(policy.act(window, before, generator=generator, t0=last).actions)
        action = queue.pop(0)
        obs, _, terminated, truncated, info = env.step(action)
        history.append(obs)
        executed.append(np.asarray(action, np.float32))
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
