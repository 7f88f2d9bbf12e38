"""Per-frame embeddings a connection has already paid for.

Consecutive windows of one robot share all but their newest frame, so a long-context image policy would
re-encode To-1 frames every chunk. The server keeps, per connection, the encoder's feature vector of each
frame it has seen recently, keyed by a digest of the frame's bytes (every observation key: the vector
holds the low-dim features too), and encodes only frames it has not seen. A frame's vector never depends
on which frames it was encoded with (``Policy.frame_features`` encodes in fixed blocks), so a cached
chunk equals an uncached one computed the same way, bit for bit.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from robopolicy.data.windows import Window


class FrameCache:
    """The feature vectors of a connection's most recent ``capacity`` distinct frames (LRU)."""

    def __init__(self, capacity: int):
        self.capacity, self._items = capacity, OrderedDict()
        self.hits = self.encoded = 0

    def get(self, digest: bytes) -> torch.Tensor | None:
        vector = self._items.get(digest)
        if vector is not None:
            self._items.move_to_end(digest)
        return vector

    def put(self, digest: bytes, vector: torch.Tensor) -> None:
        self._items[digest] = vector
        self._items.move_to_end(digest)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


def frame_cache(policy) -> FrameCache | None:
    """One robot's per-frame features, for policies whose encoder does real work (images)."""
    if not any(policy.schema[k].is_image for k in policy.obs_keys):
        return None
    return FrameCache(4 * policy.cfg.data.n_obs)


def frame_digest(window: Window, keys: list[str], i: int) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for key in keys:
        x = np.ascontiguousarray(window.obs[key][i])
        h.update(f"{key}{x.shape}{x.dtype}".encode())
        h.update(x.data)
    return h.digest()


def attach_features(policy, windows: list[Window], caches: list[FrameCache]) -> int:
    """Set each window's ``features`` (To, D) from its connection's cache, encoding the frames missing
    there (all windows' misses in one call); returns how many frames were encoded."""
    keys = policy.obs_keys
    digests = [[frame_digest(w, keys, i) for i in range(len(w.obs[keys[0]]))] for w in windows]
    known = {d: v for cache, ds in zip(caches, digests) for d in ds if (v := cache.get(d)) is not None}
    missing: dict[bytes, tuple[int, int]] = {}  # digest -> (window, frame) to encode it from
    for r, ds in enumerate(digests):
        for i, d in enumerate(ds):
            if d not in known and d not in missing:
                missing[d] = (r, i)
    if missing:
        frames = {k: np.stack([windows[r].obs[k][i] for r, i in missing.values()]) for k in keys}
        known.update(zip(missing, policy.frame_features(frames)))
    for w, cache, ds in zip(windows, caches, digests):
        w.features = torch.stack([known[d] for d in ds])
        for d in ds:
            cache.put(d, known[d])
        cache.encoded += sum(d in missing for d in ds)
        cache.hits += sum(d not in missing for d in ds)
    return len(missing)
