"""Demonstrations from a task's scripted expert into a demo store, resumable after any crash.

Every episode is one seed. Each stored frame carries its episode's seed, so a re-run after a crash
(the store holds every committed episode) continues after the last seed stored; the expert is
deterministic, so re-running an episode that had not been committed gives the same episode.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from robopolicy.data.store import DemoStore
from robopolicy.errors import ConfigError

POST_SUCCESS_STEPS = 10


def run_episode(env, seed: int, post_success_steps: int = POST_SUCCESS_STEPS) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode: observations before each action, the action, success after it.

    The expert goes on for ``post_success_steps`` after the first success (within the episode limit):
    success thresholds are loose (5 cm for reach), and an episode cut at the threshold ends mid-motion,
    which teaches a policy, through the repeated last action of end-of-episode windows, to keep going.
    """
    obs, _ = env.reset(seed=seed)
    expert = env.make_expert()
    expert.reset()
    frames, actions, successes, after = [], [], [], None
    while True:
        action = expert.act(env)
        frames.append(obs)
        actions.append(np.asarray(action, np.float32))
        obs, _, terminated, truncated, info = env.step(action)
        successes.append(bool(info["success"]))
        if after is None and (terminated or any(successes)):
            after = 0
        elif after is not None:
            after += 1
        if truncated or (after is not None and after >= post_success_steps):
            break
    episode = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
    episode["action"] = np.stack(actions)
    episode["success"] = np.array(successes)
    episode["seed"] = np.full(len(actions), seed, np.int64)
    return episode, any(successes)


def collect(task: str, episodes: int, out: str | Path, obs: str = "state", seed_start: int = 0,
            image_size: int | None = None, keep_failures: bool = False, max_tries: int | None = None,
            progress: bool = True) -> tuple[DemoStore, int, int]:
    """Collect until ``out`` holds ``episodes`` episodes; returns (store, episodes tried, expert successes)
    of this run."""
    from robopolicy import envs

    spec = envs.env_spec(task, obs, image_size)
    out = Path(out)
    if out.exists():
        store = DemoStore.open(out, mode="a")
        kept = store.extra.get("collect", {})
        if store.env_spec != spec or kept.get("keep_failures") != keep_failures \
                or kept.get("seed_start", seed_start) != seed_start:
            store.close()
            raise ConfigError(f"{out} was collected with {store.env_spec}, seed start {kept.get('seed_start')}, "
                              f"keep failures {kept.get('keep_failures')}: not what was asked now ({spec}, seed "
                              f"start {seed_start}, keep failures {keep_failures}). Re-run the same command to "
                              "continue it, or choose another --out.")
        seed = int(store.read("seed", store.n_frames - 1, store.n_frames)[0]) + 1 if store.n_episodes else seed_start
    else:
        store = DemoStore.create(out, env_spec=spec, fps=envs.get(task).factory.control_hz,
                                 extra={"collect": {"expert": "scripted", "keep_failures": keep_failures,
                                                     "seed_start": seed_start}})
        seed = seed_start
    envs.collection_seeds(seed, max(episodes - store.n_episodes, 0))  # refuses evaluation seeds up front
    env = envs.make(task, obs=obs, image_size=spec["image_size"])
    tried = succeeded = 0
    bar = tqdm(total=episodes, initial=store.n_episodes, desc=f"collect {task}", unit="episode",
               disable=not progress)
    try:
        with store:
            max_tries = max_tries or 2 * (episodes - store.n_episodes) + 10
            while store.n_episodes < episodes:
                envs.collection_seeds(seed, 1)  # never an evaluation seed
                if tried >= max_tries:
                    raise ConfigError(f"the {task} expert succeeded in only {succeeded} of {tried} episodes; the "
                                      f"store keeps those, but this is far below what it should do. Check the task "
                                      "setup (or pass --all to keep failures).")
                episode, success = run_episode(env, seed)
                tried, succeeded = tried + 1, succeeded + success
                if success or keep_failures:
                    store.append_episode(episode)
                    bar.update(1)
                bar.set_postfix(expert_success=f"{succeeded}/{tried}", seed=seed)
                seed += 1
    finally:
        bar.close()
        env.close()
    return DemoStore.open(out), tried, succeeded
