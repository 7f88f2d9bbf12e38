"""Embedding cache: a trained encoder's features, one vector per frame, written beside the demo store. (It sits
above the policy, whose encoder makes it, and below the trainer, which reads it: not in data/, which neither
knows.)

A cache is itself a demo store with the source's episode boundaries and two keys, ``embedding``
(float32, D) and the action key, so any context length or stride is assembled at load time by the
same window code. ``extra["embedding_cache"]`` ties it to what made it: the encoder's hash, the
checkpoint it came from, and the source store's episode boundaries. Training on a cache whose
encoder or source store has changed since is refused (stale cache).

The encoder runs frozen, in eval mode (center crop, no augmentation), on normalized observations:
exactly what the policy's own ``act`` computes online (checks 9-10 of algorithms.md §4).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robopolicy.data.store import DemoStore, Field
from robopolicy.device import choose as choose_device
from robopolicy.errors import ConfigError, StoreError
from robopolicy.policy import EMBEDDING_KEY, Policy


def encoder_hash(policy) -> str:
    """What determines the embeddings: encoder weights and config, observation keys, and the
    normalizer statistics of the low-dim keys the encoder concatenates."""
    h = hashlib.sha256()
    h.update(repr((policy.obs_keys, sorted(vars(policy.cfg.policy.encoder).items()))).encode())
    for name, tensor in sorted(policy.encoder.state_dict().items()):
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for key in policy.obs_keys:
        if key in policy.normalizer.scale:
            h.update(policy.normalizer.scale[key].tobytes() + policy.normalizer.offset[key].tobytes())
    return h.hexdigest()


def store_fingerprint(store: DemoStore) -> str:
    return hashlib.sha256(np.ascontiguousarray(store.episode_ends, np.int64).tobytes()).hexdigest()


def default_cache_path(store_path: str | Path, hash_: str) -> Path:
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.name.removesuffix('.zarr')}.emb-{hash_[:10]}.zarr")


@dataclass
class CacheInfo:
    path: Path
    encoder_hash: str
    checkpoint: Path
    source: Path
    source_fingerprint: str
    action_key: str


def cache_info(cache: DemoStore) -> CacheInfo:
    meta = cache.extra.get("embedding_cache")
    if meta is None:
        raise StoreError(f"{cache.path}: a demo store but not an embedding cache; make one with "
                         "`robopolicy cache --checkpoint C --store S`")
    return CacheInfo(cache.path, meta["encoder_hash"], Path(meta["checkpoint"]), Path(meta["source"]),
                     meta["source_fingerprint"], meta["action_key"])


@torch.no_grad()
def embed_frames(policy, frames: dict[str, np.ndarray]) -> np.ndarray:
    """(N, ...) raw frames of the policy's observation keys -> (N, D) float32 embeddings."""
    obs = {k: v[:, None] for k, v in policy.normalized_obs(frames).items()}  # one frame per window
    return policy.encoder(obs)[:, 0].float().cpu().numpy()


def write_cache(checkpoint: str | Path, store_path: str | Path, out: str | Path | None = None,
                batch_frames: int = 256, device: str = "auto", progress: bool = True) -> Path:
    """Embed every frame of ``store_path`` with the encoder of ``checkpoint``. Resumable: re-running
    continues an interrupted cache of the same encoder and store."""
    from tqdm import tqdm

    policy = Policy.load(checkpoint, map_location="cpu").to(choose_device(device)).eval()
    hash_ = encoder_hash(policy)
    action_key = policy.cfg.data.action_key
    with DemoStore.open(store_path) as store:
        out = Path(out) if out else default_cache_path(store.path, hash_)
        fingerprint = store_fingerprint(store)
        meta = {"encoder_hash": hash_, "checkpoint": str(Path(checkpoint).resolve()),
                "source": str(Path(store.path).resolve()), "source_fingerprint": fingerprint,
                "action_key": action_key}
        if out.exists():
            cache = DemoStore.open(out, mode="a")
            old = cache_info(cache)
            if (old.encoder_hash, old.source_fingerprint) != (hash_, fingerprint):
                cache.close()
                raise StoreError(f"{out}: holds embeddings of another encoder or store version; delete it or "
                                 "pass another --out")
        else:
            schema = {EMBEDDING_KEY: Field((policy.encoder.out_dim,), np.dtype(np.float32)),
                      action_key: store.schema[action_key]}
            cache = DemoStore.create(out, fps=store.fps, env_spec=store.env_spec, schema=schema,
                                     extra={"embedding_cache": meta})
        with cache:
            starts, ends = store.episode_starts, store.episode_ends
            todo = range(cache.n_episodes, store.n_episodes)
            bar = tqdm(total=int(ends[-1] - starts[todo.start]) if len(todo) else 0, unit="frame",
                       desc=f"cache {Path(store.path).name}", disable=not progress)
            for e in todo:
                chunks = []
                for lo in range(int(starts[e]), int(ends[e]), batch_frames):
                    hi = min(lo + batch_frames, int(ends[e]))
                    chunks.append(embed_frames(policy, {k: store.read(k, lo, hi) for k in policy.obs_keys}))
                    bar.update(hi - lo)
                cache.append_episode({EMBEDDING_KEY: np.concatenate(chunks),
                                      action_key: store.read(action_key, int(starts[e]), int(ends[e]))})
            bar.close()
    return out


def open_for_training(path: str | Path, store_path: str | Path | None = None):
    """(cache store, its info, the stage-1 policy whose encoder made it), after checking the cache is
    complete and current: the checkpoint still holds the same encoder and the source store the same
    episodes. ``store_path``, when given, must be the cache's source."""
    cache = DemoStore.open(path)
    info = cache_info(cache)
    fix = f"re-run `robopolicy cache --checkpoint {info.checkpoint} --store {info.source}`"
    if not info.checkpoint.is_dir():
        raise ConfigError(f"{path}: the checkpoint that made this cache, {info.checkpoint}, is gone; the policy "
                          "needs its encoder. Restore it, or make a new cache from another checkpoint")
    stage1 = Policy.load(info.checkpoint)
    if encoder_hash(stage1) != info.encoder_hash:
        raise ConfigError(f"{path}: stale cache: {info.checkpoint} now holds another encoder than the one these "
                          f"embeddings came from; {fix}")
    source = Path(store_path) if store_path else info.source
    if source.exists():
        with DemoStore.open(source) as store:
            if store_path and store.path.resolve() != info.source:
                raise ConfigError(f"{path} was made from {info.source}, not {store_path}; pass that store or "
                                  f"cache this one")
            if store_fingerprint(store) != info.source_fingerprint:
                raise ConfigError(f"{path}: stale cache: {source} changed since (now {store.n_episodes} "
                                  f"episodes); {fix}")
            complete = cache.n_episodes == store.n_episodes
    else:
        complete = store_fingerprint(cache) == info.source_fingerprint
    if not complete:
        raise ConfigError(f"{path}: incomplete ({cache.n_episodes} episodes cached); {fix} to finish it")
    return cache, info, stage1


__all__ = ["EMBEDDING_KEY", "CacheInfo", "cache_info", "embed_frames", "encoder_hash", "open_for_training",
           "write_cache"]
