"""The proof that a memory task needs memory, measured on the real task and its expert.

Two histories that differ only in the hidden variable are lined up at their decision steps. There:
the states agree within STATE_TOL per coordinate and the images within IMAGE_TOL mean per pixel
(so no policy that sees only the present can tell them apart), while the expert's actions differ
by more than ACTION_GAP. Walking back from the decision step, the first step at which the two
histories differ clearly is how far back the deciding information lies: it must be within the
declared memory span.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_TOL = 1e-3  # per coordinate
IMAGE_TOL = 2.0  # mean absolute difference per pixel, in 0..255 units (2/255)
ACTION_GAP = 0.5  # L2 between the expert's actions at the decision step
CLEAR_STATE, CLEAR_IMAGE = 1e-2, 4.0  # "clearly different", for the measured span


@dataclass
class Rollout:
    obs: list[dict[str, np.ndarray]]  # obs[t]: what the policy sees before acting at step t
    actions: list[np.ndarray]
    decision_steps: list[int]
    success: bool


def rollout(task_cls, seed: int, obs: str = "image", image_size: int = 96) -> Rollout:
    env = task_cls(obs=obs, image_size=image_size)
    o, _ = env.reset(seed=seed)
    expert = env.make_expert()
    expert.reset()
    observations, actions, success = [o], [], False
    for _ in range(env.max_episode_steps):
        a = expert.act(env)
        o, _, terminated, truncated, info = env.step(a)
        observations.append(o)
        actions.append(a)
        success = info["success"]
        if terminated or truncated:
            break
    env.close()
    return Rollout(observations[: len(actions)], actions, list(expert.decision_steps), success)


def _difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, float]:
    state = float(np.abs(a["state"] - b["state"]).max())
    images = [float(np.abs(a[k].astype(np.int16) - b[k].astype(np.int16)).mean()) for k in a if k.endswith("_image")]
    return state, max(images, default=0.0)


@dataclass
class MemoryProof:
    state_diff: float  # max per-coordinate difference at the decision step
    image_diff: float  # mean per-pixel difference at the decision step (0..255)
    action_diff: float  # L2 between the expert's actions at the decision step
    measured_span: int  # steps back to the first clear difference

    def holds(self, memory_span: int) -> bool:
        return (self.state_diff <= STATE_TOL and self.image_diff <= IMAGE_TOL and self.action_diff > ACTION_GAP
                and self.measured_span <= memory_span)


def compare(a: Rollout, da: int, b: Rollout, db: int) -> MemoryProof:
    """Line up rollout ``a`` at step ``da`` with ``b`` at ``db`` and measure."""
    state, image = _difference(a.obs[da], b.obs[db])
    action = float(np.linalg.norm(a.actions[da] - b.actions[db]))
    span = 0
    while da - span >= 0 and db - span >= 0:
        s, i = _difference(a.obs[da - span], b.obs[db - span])
        if s > CLEAR_STATE or i > CLEAR_IMAGE:
            break
        span += 1
    return MemoryProof(state, image, action, span)


def prove(task_cls, seed: int, image_size: int = 96) -> MemoryProof:
    """The proof for one pair: seeds 2k and 2k+1 for a per-seed hidden variable, or the two decision
    steps of one episode for a count."""
    if task_cls.hidden_per_seed:
        a, b = rollout(task_cls, seed - seed % 2, image_size=image_size), \
            rollout(task_cls, seed - seed % 2 + 1, image_size=image_size)
        return compare(a, a.decision_steps[0], b, b.decision_steps[0])
    a = rollout(task_cls, seed, image_size=image_size)
    return compare(a, a.decision_steps[0], a, a.decision_steps[1])
