"""Training windows: which frames and actions one sample holds.

A window anchored at frame t of an episode holds
  obs     frames  t-(To-1)s, ..., t-s, t                       (To frames, stride s)
  action  tokens  a_{t-(To-1)s}, ..., a_{t-s}, a_t, a_{t+1}, ..., a_{t+H-To}
                  \\___ To-1 past, strided ___/ current \\____ future, dense ____/
which is Past-Token Prediction's layout (algorithms.md §1.1): past token i is the action taken at
the time of observation frame i. Indices are clipped to the episode, so padding repeats the first
frame/action at the start and the last ones at the end, and a window never crosses episodes.
``past_act`` (the executed-actions-as-input ablation) gives, for each observation frame, the action
executed just before it was captured (a_{tau-1}; the first action at the episode start).
"""
from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def context(self) -> int:
        """How far back (in steps) the first observation frame lies."""
        return (self.n_obs - 1) * self.stride


@dataclass
class WindowIndex:
    """Frame indices (into arrays of concatenated episodes) of every window anchor."""

    anchor: np.ndarray  # (N,) frame index t of each window
    obs: np.ndarray  # (N, To)
    action: np.ndarray  # (N, H)
    past_act: np.ndarray | None  # (N, To)

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
    past_act = np.clip(t - back - 1, lo, hi) if spec.past_act else None
    return WindowIndex(t[:, 0], obs, action, past_act)


def split_episodes(n_episodes: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/val split by whole episodes (at least one train episode; val may be empty)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = min(int(round(val_fraction * n_episodes)), max(n_episodes - 1, 0))
    return np.sort(order[n_val:]), np.sort(order[:n_val])
