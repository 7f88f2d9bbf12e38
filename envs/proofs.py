"""The proof that a memory task needs memory, measured on the real task and its expert.

Two histories that differ only in the hidden variable are lined up at their decision steps. There,
and one step before (all a To=2 window sees), the states agree within STATE_TOL per coordinate and
the images within IMAGE_TOL mean per pixel, while the expert's actions differ by more than
ACTION_GAP. Walking back from the decision step, the first step at which the two histories differ
clearly is how far back the deciding information lies: it must be within the declared memory span,
and a To=16 window with the shipped stride must hold a clearly different frame.

What it shows is about the expert's histories: a closed-loop short-context policy that drifts from
them could still carry a trace of the hidden variable in its own arm pose.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robopolicy.envs.tasks import CONTEXT_STRIDE

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
    state_diff: float  # max per-coordinate difference over the frames a To=2 window sees at the decision
    image_diff: float  # max mean per-pixel difference (0..255) over those frames
    action_diff: float  # L2 between the expert's actions at the decision step
    measured_span: int | None  # steps back to the first clear difference (None: none found)
    long_context_sees: bool  # a To=16 window with the shipped stride holds a clearly different frame

    def holds(self, memory_span: int) -> bool:
        return (self.state_diff <= STATE_TOL and self.image_diff <= IMAGE_TOL and self.action_diff > ACTION_GAP
                and self.measured_span is not None and 1 < self.measured_span <= memory_span
                and self.long_context_sees)


def _clear(a: dict, b: dict) -> bool:
    s, i = _difference(a, b)
    return s > CLEAR_STATE or i > CLEAR_IMAGE


def compare(a: Rollout, da: int, b: Rollout, db: int, n_obs: int = 16, stride: int = CONTEXT_STRIDE) -> MemoryProof:
    """Line up rollout ``a`` at step ``da`` with ``b`` at ``db`` and measure."""
    short = [_difference(a.obs[da - j], b.obs[db - j]) for j in range(2)]  # what a To=2 window sees
    action = float(np.linalg.norm(a.actions[da] - b.actions[db]))
    span = next((j for j in range(min(da, db) + 1) if _clear(a.obs[da - j], b.obs[db - j])), None)
    # a long-context window pads with the first frame before the episode start, as training windows do
    sees = any(_clear(a.obs[max(da - k * stride, 0)], b.obs[max(db - k * stride, 0)]) for k in range(1, n_obs))
    return MemoryProof(max(s for s, _ in short), max(i for _, i in short), action, span, sees)


def prove(task_cls, seed: int, image_size: int = 96) -> MemoryProof:
    """The proof for one pair: seeds 2k and 2k+1 for a per-seed hidden variable, or the two decision
    steps of one episode for a count."""
    if task_cls.hidden_per_seed:
        a, b = rollout(task_cls, seed - seed % 2, image_size=image_size), \
            rollout(task_cls, seed - seed % 2 + 1, image_size=image_size)
        return compare(a, a.decision_steps[0], b, b.decision_steps[0])
    a = rollout(task_cls, seed, image_size=image_size)
    return compare(a, a.decision_steps[0], a, a.decision_steps[1])
