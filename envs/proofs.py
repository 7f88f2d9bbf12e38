"""The proof that a memory task needs memory, measured on the real task and its expert.

Two histories that differ only in the hidden variable are lined up at their decision steps. There,
and one step before (all a To=2 window sees), the states agree within STATE_TOL per coordinate, the
images within IMAGE_TOL as a mean over all pixels and within CUE_TOL at every pixel of the cue's
region (where a task's cue appears in either history; a count has no cue and no region), while the
expert's actions differ by more than ACTION_GAP. The region bound is what rules the cue out: the cue
covers a dozen pixels of a 96x96 frame, which moves the whole-image mean by about 0.25/255 but the
region's pixels by about 170/255. Walking back from the decision step, the first step at which the two histories differ
clearly is how far back the deciding information lies: it must be within the declared memory span,
and a To=16 window with the shipped stride must hold a clearly different frame.

What it shows is about the expert's histories: a closed-loop short-context policy that drifts from
them could still carry a trace of the hidden variable in its own arm pose.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robopolicy.data.windows import WindowSpec, windows_at
from robopolicy.envs.tasks import CONTEXT_STRIDE

STATE_TOL = 1e-3  # per coordinate
IMAGE_TOL = 2.0  # mean absolute difference over all pixels and channels, in 0..255 units (2/255)
# max absolute difference at any pixel and channel of the cue's region (0..255): a shown cue makes ~170
# there, identical renders 0
CUE_TOL = 8.0
CUE_MARGIN = 2.0  # pixels added to the cue's projected radius: off-axis its outline is wider; pixels are whole
ACTION_GAP = 0.5  # L2 between the expert's actions at the decision step
# "clearly different", for the measured span: a state coordinate, the whole-image mean, a cue-region pixel
CLEAR_STATE, CLEAR_IMAGE, CLEAR_CUE = 1e-2, 4.0, 64.0


@dataclass
class Rollout:
    obs: list[dict[str, np.ndarray]]  # obs[t]: what the policy sees before acting at step t
    actions: list[np.ndarray]
    decision_steps: list[int]
    success: bool
    cue_region: dict[str, np.ndarray] = field(default_factory=dict)  # image key -> HxW bool; {}: no cue


def cue_region(env) -> dict[str, np.ndarray]:
    """Where the cue appears in each camera's frame: its ball (Meta-World's goal site, which
    ``MemoryTask._show_cue`` shows) projected through the camera, plus CUE_MARGIN pixels.
    Projected rather than rendered, so that the arm passing in front of it cannot shrink it."""
    model, data, n = env.sim.model, env.sim.data, env.image_size
    site = model.site("goal").id
    center, radius = data.site_xpos[site], float(model.site_size[site].max())
    rows, cols = np.mgrid[:n, :n] + 0.5  # pixel centres, rows from the top as MuJoCo reads them out
    region = {}
    for name in env.camera_names:
        cam = model.camera(name).id
        x, y, z = data.cam_xmat[cam].reshape(3, 3).T @ (center - data.cam_xpos[cam])  # camera looks down -z
        f = n / 2 / np.tan(np.radians(model.cam_fovy[cam]) / 2)  # focal length in pixels
        u, v, r = n / 2 + f * x / -z, n / 2 - f * y / -z, f * radius / -z + CUE_MARGIN
        disc = (cols - u) ** 2 + (rows - v) ** 2 <= r**2
        region[f"{name}_image"] = disc[::-1] if env._cameras.flip else disc  # as the frames are stored
    return region


def rollout(task_cls, seed: int, obs: str = "image", image_size: int = 96) -> Rollout:
    env = task_cls(obs=obs, image_size=image_size)
    o, _ = env.reset(seed=seed)
    # the cue shows from the reset on (and the site and cameras stay put), so its region is known now
    region = cue_region(env) if obs == "image" and getattr(env, "cue_visible", False) else {}
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
    return Rollout(observations[: len(actions)], actions, list(expert.decision_steps), success, region)


def _difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                region: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """(max state coordinate, max over cameras of the whole-image mean, max inside the cue's region)."""
    state, mean, cue = float(np.abs(a["state"] - b["state"]).max()), 0.0, 0.0
    for k in (k for k in a if k.endswith("_image")):
        d = np.abs(a[k].astype(np.int16) - b[k].astype(np.int16))
        mean = max(mean, float(d.mean()))
        if k in region and region[k].any():
            cue = max(cue, float(d[region[k]].max()))
    return state, mean, cue


@dataclass
class MemoryProof:
    state_diff: float  # max per-coordinate difference over the frames a To=2 window sees at the decision
    image_mean_diff: float  # max over those frames of the whole-image mean absolute difference (0..255)
    cue_diff: float  # max absolute difference at any pixel of the cue's region over those frames (0: no cue)
    action_diff: float  # L2 between the expert's actions at the decision step
    measured_span: int | None  # steps back to the first clear difference (None: none found)
    long_context_sees: bool  # a To=16 window with the shipped stride holds a clearly different frame

    def holds(self, memory_span: int) -> bool:
        return (self.state_diff <= STATE_TOL and self.image_mean_diff <= IMAGE_TOL and self.cue_diff <= CUE_TOL
                and self.action_diff > ACTION_GAP
                and self.measured_span is not None and 1 < self.measured_span <= memory_span
                and self.long_context_sees)


def _clear(state: float, mean: float, cue: float) -> bool:
    return state > CLEAR_STATE or mean > CLEAR_IMAGE or cue > CLEAR_CUE


def compare(a: Rollout, da: int, b: Rollout, db: int, n_obs: int = 16, stride: int = CONTEXT_STRIDE) -> MemoryProof:
    """Line up rollout ``a`` at step ``da`` with ``b`` at ``db`` and measure."""
    # the cue shows at a different place in each history: either place may give it away
    region = {k: np.logical_or(a.cue_region.get(k, False), b.cue_region.get(k, False))
              for k in a.cue_region.keys() | b.cue_region.keys()}

    def diff(i: int, j: int) -> tuple[float, float, float]:
        return _difference(a.obs[i], b.obs[j], region)

    short = [diff(da - j, db - j) for j in range(2)]  # what a To=2 window sees
    action = float(np.linalg.norm(a.actions[da] - b.actions[db]))
    span = next((j for j in range(min(da, db) + 1) if _clear(*diff(da - j, db - j))), None)
    # the window training would build at the decision step of an episode that ends there (padded at the start)
    frames = windows_at(np.array([da, db]), np.zeros(2, np.int64), np.array([da + 1, db + 1]),
                        WindowSpec(n_obs, horizon=n_obs, stride=stride)).obs
    sees = any(_clear(*diff(i, j)) for i, j in zip(*frames))
    state, mean, cue = (max(column) for column in zip(*short))
    return MemoryProof(state, mean, cue, action, span, sees)


def prove(task_cls, seed: int, image_size: int = 96) -> MemoryProof:
    """The proof for one pair: seeds 2k and 2k+1 for a per-seed hidden variable, or the two decision
    steps of one episode for a count."""
    if task_cls.hidden_per_seed:
        a, b = rollout(task_cls, seed - seed % 2, image_size=image_size), \
            rollout(task_cls, seed - seed % 2 + 1, image_size=image_size)
        return compare(a, a.decision_steps[0], b, b.decision_steps[0])
    a = rollout(task_cls, seed, image_size=image_size)
    return compare(a, a.decision_steps[0], a, a.decision_steps[1])
