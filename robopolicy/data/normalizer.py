"""Per-key affine normalization, y = x * scale + offset, whose statistics travel with the policy.

``minmax`` maps each dimension's [min, max] onto [-1, 1] (what diffusion heads and EBT-Policy's
action space expect); ``gaussian`` maps to zero mean, unit variance. A constant dimension maps to 0.
Images are not normalized here: they stay uint8 until the encoder, on the device, divides by 255
(4x less to move than float32).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from robopolicy.errors import ConfigError

MODES = ("minmax", "gaussian")
_EPS = 1e-6


class Normalizer:
    def __init__(self, scale: Mapping[str, np.ndarray] | None = None, offset: Mapping[str, np.ndarray] | None = None):
        self.scale = {k: np.asarray(v, np.float32) for k, v in (scale or {}).items()}
        self.offset = {k: np.asarray(v, np.float32) for k, v in (offset or {}).items()}
        self._torch_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def fit(cls, arrays: Mapping[str, np.ndarray], modes: Mapping[str, str],
            min_span: Mapping[str, float] | None = None) -> Normalizer:
        """Statistics of each ``arrays[key]`` (frames along axis 0) in ``modes[key]``. ``min_span[key]``:
        a dimension that varies less than this (a resting object's jitter, say) is scaled as if it spanned
        that much, so its noise is not blown up to the full [-1, 1]."""
        scale, offset = {}, {}
        for key, mode in modes.items():
            if mode not in MODES:
                raise ConfigError(f"normalizer mode for {key!r} must be one of {MODES}, got {mode!r}")
            x = np.asarray(arrays[key], np.float64).reshape(len(arrays[key]), -1)
            if not np.all(np.isfinite(x)):
                raise ConfigError(f"{key!r} holds NaN or inf values; clean the data before fitting a normalizer")
            floor = max((min_span or {}).get(key, 0.0), _EPS)
            if mode == "minmax":
                lo, hi = x.min(0), x.max(0)
                s = 2.0 / np.maximum(hi - lo, floor)
                o = -(lo + hi) / 2 * s  # the middle of the range maps to 0
            else:
                mean = x.mean(0)
                s = 1.0 / np.maximum(x.std(0), floor)
                o = -mean * s
            shape = np.asarray(arrays[key]).shape[1:]
            scale[key], offset[key] = s.reshape(shape), o.reshape(shape)
        return cls(scale, offset)

    @classmethod
    def for_policy(cls, arrays: Mapping[str, np.ndarray], low_dim: list[str], action_key: str,
                   obs_min_span: float) -> Normalizer:
        """The one rule a policy's statistics follow (training on a store or a cache, the benchmarks alike):
        min-max to [-1, 1] for its low-dim observations and its actions, where an observation dimension that
        barely moves in the demos (a resting object's jitter) is scaled as if it spanned ``obs_min_span``
        (``data.obs_min_span``), so its noise stays near 0 instead of being stretched over [-1, 1]."""
        return cls.fit(arrays, {k: "minmax" for k in [*low_dim, action_key]},
                       min_span={k: obs_min_span for k in low_dim})

    @property
    def keys(self) -> list[str]:
        return sorted(self.scale)

    def normalize(self, key: str, x):
        return self._apply(key, x, inverse=False)

    def unnormalize(self, key: str, y):
        return self._apply(key, y, inverse=True)

    def normalize_batch(self, batch: Mapping[str, np.ndarray], key_map: Mapping[str, str] | None = None) -> dict:
        """Normalize every key with statistics (``key_map`` maps a batch key to a statistics key)."""
        key_map = key_map or {}
        return {k: self.normalize(key_map.get(k, k), v) if key_map.get(k, k) in self.scale else v
                for k, v in batch.items()}

    def _apply(self, key: str, x, inverse: bool):
        if key not in self.scale:
            raise KeyError(f"normalizer has no statistics for {key!r}; it has {self.keys}")
        if isinstance(x, torch.Tensor):
            cache_key = (key, x.device, x.dtype)
            if cache_key not in self._torch_cache:
                self._torch_cache[cache_key] = (torch.as_tensor(self.scale[key], dtype=x.dtype, device=x.device),
                                                torch.as_tensor(self.offset[key], dtype=x.dtype, device=x.device))
            s, o = self._torch_cache[cache_key]
        else:
            s, o = self.scale[key], self.offset[key]
            x = np.asarray(x, np.float32)
        return (x - o) / s if inverse else x * s + o

    # Flat tensors, so the statistics go into the same safetensors file as the weights.
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for k in self.keys:
            out[f"{k}.scale"] = torch.from_numpy(self.scale[k].copy())
            out[f"{k}.offset"] = torch.from_numpy(self.offset[k].copy())
        return out

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> Normalizer:
        scale = {k[: -len(".scale")]: v.numpy() for k, v in state.items() if k.endswith(".scale")}
        offset = {k[: -len(".offset")]: v.numpy() for k, v in state.items() if k.endswith(".offset")}
        if set(scale) != set(offset):
            raise ConfigError(f"normalizer state is incomplete: scale for {sorted(scale)}, offset for {sorted(offset)}")
        return cls(scale, offset)
