"""Training windows: which frames and actions one sample holds.

A window anchored at frame t of an episode holds
  obs     frames  t-(To-1)s, ..., t-s, t                       (To frames, stride s)
  action  tokens  a_{t-(To-1)s}, ..., a_{t-s}, a_t, a_{t+1}, ..., a_{t+H-To}
                  \\___ To-1 past, strided ___/ current \\____ future, dense ____/
which is Past-Token Prediction's layout (algorithms.md §1.1): past token i is the action taken at
the time of observation frame i. Indices are clipped to the episode, so padding repeats the first
frame/action at the start and the last ones at the end, and a window never crosses episodes.

The same geometry serves live histories (``History``): a rollout or a control loop holds one episode's
observations and executed actions and asks for the window at its latest step, which is, frame for
frame, the window training builds at that step of the same episode (the episode so far is an episode
that ends now; no index of a window anchored at t points past t).

Two kinds of executed actions, not to be confused (they are one step apart):
- **actions before frames** (``past_act``, To x Da): for each observation frame tau, the action executed
  just *before* it was captured, a_{tau-1}: an input of the past-actions-as-input ablation. The
  episode's first frame has none: its index is NO_ACTION and the loaders give it the neutral action
  (0 in normalized action space; at inference the policy does the same).
- **actions at past frames** (To-1 x Da): for each past frame tau, the action executed *at* it, a_tau:
  Past-Token Prediction's past tokens, which self-verification compares predicted pasts with.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

from robopolicy.errors import ConfigError


@dataclass(frozen=True)
class WindowSpec:
    n_obs: int = 2  # To: observation frames per window
    horizon: int = 16  # H: action tokens per window, To-1 past + current + H-To future
    stride: int = 1  # s: steps between observation frames (and past action tokens)
    past_act: bool = False  # also return executed past actions as an observation input
    # At most this many padded future steps per window (Diffusion Policy's pad_after); None: every
    # frame of an episode anchors a window, the last ones with futures that repeat the last action.
    future_pad: int | None = None

    def __post_init__(self):
        if self.n_obs < 1 or self.stride < 1:
            raise ConfigError(f"window needs n_obs >= 1 and stride >= 1, got n_obs={self.n_obs}, stride={self.stride}")
        if self.horizon < self.n_obs:
            raise ConfigError(f"window horizon H={self.horizon} must be >= n_obs To={self.n_obs}: the chunk holds "
                              "To-1 past tokens, the current one and H-To future ones")

    @classmethod
    def of(cls, data) -> WindowSpec:
        """The window a config's ``data`` section (DataConfig, or a server's metadata) describes: the one
        definition training, acting and every benchmark share."""
        get = data.get if isinstance(data, dict) else lambda key, default=None: getattr(data, key, default)
        return cls(get("n_obs"), get("horizon"), get("stride", 1), past_act=bool(get("past_act", False)))

    @property
    def context(self) -> int:
        """How far back (in steps) the first observation frame lies."""
        return (self.n_obs - 1) * self.stride


NO_ACTION = -1  # index of "no action executed yet" in WindowIndex.past_act


@dataclass
class WindowIndex:
    """Frame indices (into arrays of concatenated episodes) of every window anchor."""

    anchor: np.ndarray  # (N,) frame index t of each window
    obs: np.ndarray  # (N, To)
    action: np.ndarray  # (N, H)
    past_act: np.ndarray | None  # (N, To): the action before each frame; NO_ACTION at an episode's first frame

    def __len__(self) -> int:
        return len(self.anchor)


def window_index(episode_ends: np.ndarray, spec: WindowSpec, episodes: np.ndarray | None = None) -> WindowIndex:
    """Indices of every window anchored in ``episodes`` (default: all); ``episode_ends`` are cumulative."""
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    episodes = np.arange(len(ends)) if episodes is None else np.asarray(episodes, dtype=np.int64)
    cut = 0 if spec.future_pad is None else max(spec.horizon - spec.n_obs - spec.future_pad, 0)
    last = np.maximum(ends[episodes] - cut, starts[episodes])  # exclusive end of each episode's anchors
    lengths = last - starts[episodes]
    anchor = np.concatenate([np.arange(starts[e], stop) for e, stop in zip(episodes, last)]) if len(episodes) \
        else np.zeros(0, np.int64)
    return windows_at(anchor, np.repeat(starts[episodes], lengths), np.repeat(ends[episodes], lengths), spec)


def windows_at(anchor: np.ndarray, ep_start: np.ndarray, ep_end: np.ndarray, spec: WindowSpec) -> WindowIndex:
    """Indices of the windows anchored at frames ``anchor`` of episodes spanning [ep_start, ep_end)."""
    t = np.asarray(anchor, np.int64)[:, None]
    lo, hi = np.asarray(ep_start, np.int64)[:, None], np.asarray(ep_end, np.int64)[:, None] - 1
    To, H, s = spec.n_obs, spec.horizon, spec.stride
    back = np.arange(To - 1, -1, -1) * s  # (To,) steps before t of each observation frame
    obs = np.clip(t - back, lo, hi)
    steps = np.concatenate([-back[:-1], np.arange(0, H - To + 1)])  # past (strided), current, future (dense)
    action = np.clip(t + steps, lo, hi)
    past_act = None
    if spec.past_act:  # before an episode's first frame no action was executed: no label leaks in as input
        before = t - back - 1
        past_act = np.where(before < lo, NO_ACTION, np.minimum(before, hi))
    return WindowIndex(t[:, 0], obs, action, past_act)


def split_episodes(n_episodes: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/val split by whole episodes (at least one train episode; val may be empty)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = min(int(round(val_fraction * n_episodes)), max(n_episodes - 1, 0))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ------------------------------------------------------------------ live histories
@dataclass
class Window:
    """What a policy acts on at step ``t`` of one episode, built by ``History.window``."""

    obs: dict[str, np.ndarray]  # (To, ...) raw observations, oldest first
    t: int = 0  # the step of the last frame
    actions_before_frames: np.ndarray | None = None  # (To, Da) raw; NaN rows: none executed yet (neutral action)
    actions_at_past_frames: np.ndarray | None = None  # (To-1, Da) raw, once the history reaches the first frame
    queued: np.ndarray | None = None  # (L, Da) raw: the previous chunk's planned actions due from t on
    steps: np.ndarray | None = None  # (To,) the episode step of each frame (a live loop stamps them with times)
    # real-time chunking: the first ``committed`` queued actions run before the new chunk can arrive, so the
    # chunk must keep them (the heads' known actions, at tokens To-1 .. To-2+committed)
    committed: int = 0
    # (To, D) the encoder's per-frame features of ``obs``, when a server's frame cache already has them
    # (serve/frames.py): the policy acts on these instead of encoding the frames again
    features: object | None = None


@dataclass
class History:
    """One episode as it happens: observations, executed actions, and the last chunk's plan.

    ``start(obs)`` at reset, ``record(action, obs)`` after every step, ``window()`` before acting,
    ``plan(actions, t)`` when a chunk arrives whose first action is due at step t."""

    spec: WindowSpec
    action_dim: int
    obs: list[dict[str, np.ndarray]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)  # actions[i]: executed at step i
    _plan: np.ndarray | None = None
    _plan_t: int = 0

    def start(self, obs: dict[str, np.ndarray]) -> None:
        self.obs, self.actions, self._plan = [obs], [], None

    def record(self, action: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        self.actions.append(np.asarray(action, np.float32))
        self.obs.append(obs)

    def plan(self, actions: np.ndarray, t: int) -> None:
        self._plan, self._plan_t = np.asarray(actions, np.float32), t

    @property
    def t(self) -> int:
        """The step of the latest observation (actions 0..t-1 have been executed)."""
        return len(self.obs) - 1

    @property
    def full(self) -> bool:
        """The window's first frame is a real frame, not padding."""
        return self.t >= self.spec.context

    def window(self, keys: list[str] | None = None) -> Window:
        t = self.t
        # the episode so far, [0, t], is an episode that ends now: training's geometry, training's padding
        index = windows_at(np.array([t]), np.array([0]), np.array([t + 1]), replace(self.spec, past_act=True))
        keys = list(self.obs[0]) if keys is None else keys
        obs = {k: np.stack([self.obs[i][k] for i in index.obs[0]]) for k in keys}
        none = np.full(self.action_dim, np.nan, np.float32)
        before = np.stack([self.actions[i] if i != NO_ACTION else none for i in index.past_act[0]])
        at_past = None
        if self.full and self.spec.n_obs > 1:
            at_past = np.stack([self.actions[i] for i in index.action[0, : self.spec.n_obs - 1]])
        queued = None
        if self._plan is not None and 0 <= t - self._plan_t < len(self._plan):
            queued = self._plan[t - self._plan_t:]
        return Window(obs, t, before, at_past, queued, index.obs[0].copy())


def actions_hash(actions: np.ndarray) -> str:
    """An episode's executed actions (float32, in order) as 16 hex digits: equal runs, equal hashes (evaluation
    records and the control loop's alike)."""
    return hashlib.sha256(np.ascontiguousarray(actions, np.float32).tobytes()).hexdigest()[:16]
