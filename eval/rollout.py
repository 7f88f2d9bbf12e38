"""A minimal closed-loop rollout: a policy acting in a task, chunk by chunk (the eval suites build on it).

The observation window is To frames ``stride`` steps apart, the first observation repeated until the
history fills (as training windows pad); Ta actions of each chunk run before the next is sampled.
"""
from __future__ import annotations

import numpy as np
import torch


def executed_at_past_frames(executed: list[np.ndarray], last: int, n_obs: int, stride: int) -> np.ndarray | None:
    """The actions executed at the timestamps of the past frames of the window ending at step ``last``
    (frames last - (n_obs-1)*stride, ..., last - stride), which a PTP policy's predicted past is verified
    against; None while the history does not reach back to the first frame (no verification yet). With a
    stride these are the actions at the subsampled timestamps, not the most recent ones (check 12)."""
    first = last - (n_obs - 1) * stride
    if n_obs < 2 or first < 0:
        return None
    return np.stack([executed[first + j * stride] for j in range(n_obs - 1)])


def rollout(policy, env, seed: int, generator: torch.Generator | None = None, k: int = 1) -> bool:
    """One episode; ``k`` > 1 samples k candidates per chunk and executes the policy's pick (its head's
    scores, or self-verification against the executed past once the history is full)."""
    cfg = policy.cfg.data
    obs, _ = env.reset(seed=seed)
    history, executed, queue, info = [obs], [], [], {"success": False}
    # before the first action, a policy fed its executed actions sees the middle of the action range
    neutral = policy.normalizer.unnormalize(cfg.action_key, np.zeros(policy.action_dim, np.float32))
    while True:
        if not queue:
            last = len(history) - 1
            frames = [max(last - (cfg.n_obs - 1 - j) * cfg.stride, 0) for j in range(cfg.n_obs)]
            window = {key: np.stack([history[f][key] for f in frames]) for key in policy.obs_keys}
            before = np.stack([executed[f - 1] if f >= 1 else neutral for f in frames])  # the action before each
            past = executed_at_past_frames(executed, last, cfg.n_obs, cfg.stride) if k > 1 else None
            queue = list(policy.act(window, before, k=k, generator=generator, t0=last, past_actions=past).actions)
        action = queue.pop(0)
        obs, _, terminated, truncated, info = env.step(action)
        history.append(obs)
        executed.append(np.asarray(action, np.float32))
        if terminated or truncated:
            return bool(info["success"])


def rollouts(policy, task: str, seeds, obs: str = "state", image_size: int | None = None,
             progress: bool = False, k: int = 1) -> list[bool]:
    """Success of one rollout per seed (sampling noise seeded by the seed too, so reruns agree)."""
    from tqdm import tqdm

    from robopolicy import envs

    kwargs = {"image_size": image_size} if image_size else {}
    env = envs.make(task, obs=obs, **kwargs)
    try:
        return [rollout(policy, env, int(s), torch.Generator().manual_seed(int(s)), k=k)
                for s in tqdm(seeds, desc=f"eval {task}", unit="ep", disable=not progress)]
    finally:
        env.close()


def success_rate(policy, task: str, seeds, obs: str = "state", image_size: int | None = None, k: int = 1) -> float:
    return float(np.mean(rollouts(policy, task, seeds, obs=obs, image_size=image_size, k=k)))
