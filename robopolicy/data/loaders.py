"""Training batches from a demo store: in RAM, or streamed from disk by worker processes.

Both paths share one gather (``WindowGather``): windows are index tables into arrays of frames,
and a batch is one fancy-index per key, then normalization.

- ``InMemoryWindows`` decompresses the needed keys once and gathers from RAM.
- ``StreamingWindows`` (a torch IterableDataset) has each worker read contiguous blocks of
  frames (one zarr read per key and block) and gather shuffled windows from a few blocks at a
  time, so disk reads stay sequential while batches stay well mixed.
- ``NaiveWindows`` reads every window from zarr on its own (what Diffusion Policy's dataset does);
  it is kept as the baseline ``robopolicy bench data`` measures against.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robopolicy.data.normalizer import Normalizer
from robopolicy.data.store import DemoStore
from robopolicy.data.windows import NO_ACTION, WindowIndex, WindowSpec, window_index, windows_at


@dataclass
class WindowGather:
    """Turns rows of a WindowIndex into a collated, normalized batch."""

    spec: WindowSpec
    obs_keys: Sequence[str]
    action_key: str = "action"
    normalizer: Normalizer | None = None

    @property
    def keys(self) -> list[str]:
        return list(dict.fromkeys([*self.obs_keys, self.action_key]))

    def __call__(self, arrays: dict[str, np.ndarray], index: WindowIndex, rows: np.ndarray) -> dict:
        obs = {k: arrays[k][index.obs[rows]] for k in self.obs_keys}
        action = arrays[self.action_key][index.action[rows]]
        if self.spec.past_act:
            before = index.past_act[rows]
            obs["past_act"] = arrays[self.action_key][np.maximum(before, 0)]
        norm = self.normalizer
        if norm is not None:
            stats = {k: self.action_key if k == "past_act" else k for k in obs}  # past_act uses the action's
            obs = {k: norm.normalize(stats[k], v) if stats[k] in norm.scale else v for k, v in obs.items()}
            if self.action_key in norm.scale:
                action = norm.normalize(self.action_key, action)
        if self.spec.past_act:  # no action before an episode's first frame: the neutral one, 0 normalized
            obs["past_act"] = np.where((before == NO_ACTION)[..., None], np.float32(0), obs["past_act"])
        return {"obs": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in obs.items()},
                "action": torch.from_numpy(np.ascontiguousarray(action))}


def concat_batches(a: dict, b: dict) -> dict:
    return {"obs": {k: torch.cat([a["obs"][k], b["obs"][k]]) for k in a["obs"]},
            "action": torch.cat([a["action"], b["action"]])}


class InMemoryWindows:
    """Every window of ``episodes``, gathered from arrays decompressed into RAM once."""

    def __init__(self, store: DemoStore, gather: WindowGather, episodes: np.ndarray | None = None):
        self.gather = gather
        self.arrays = store.load(gather.keys)
        self.index = window_index(store.episode_ends, gather.spec, episodes)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, rows: np.ndarray) -> dict:
        return self.gather(self.arrays, self.index, np.asarray(rows))

    def batches(self, batch_size: int, shuffle: bool = True, seed: int | tuple[int, ...] = 0,
                drop_last: bool = True, shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
        """One epoch of batches. ``shard=(rank, world)``: this rank's share, every world-th batch of the
        same order, each rank the same number (only those batches are gathered)."""
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        starts = range(0, stop, batch_size)
        rank, world = shard
        if world > 1:
            starts = starts[rank: len(starts) - len(starts) % world: world]
        for i in starts:
            yield self.batch(order[i: i + batch_size])


class StreamingWindows(torch.utils.data.IterableDataset):
    """Batches streamed from disk by block; use with ``DataLoader(ds, batch_size=None, num_workers=k)``.

    Every worker takes its share of a seeded permutation of blocks (``block_frames`` anchors each,
    never across episodes), reads ``blocks_per_shuffle`` of them at a time and yields batches of
    windows shuffled across them. Each epoch yields every window of ``episodes`` once (the last
    partial batch of each worker is dropped when ``drop_last``).
    """

    def __init__(self, path: str | Path, gather: WindowGather, batch_size: int, episodes: np.ndarray | None = None,
                 block_frames: int = 256, blocks_per_shuffle: int = 8, seed: int = 0, drop_last: bool = True):
        super().__init__()
        self.path, self.gather, self.batch_size = str(path), gather, batch_size
        self.block_frames, self.blocks_per_shuffle = block_frames, blocks_per_shuffle
        self.seed, self.drop_last = seed, drop_last
        self.epoch = 0
        with DemoStore.open(self.path) as store:
            ends = store.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        episodes = np.arange(len(ends)) if episodes is None else np.asarray(episodes)
        # (episode start, episode end, first anchor, end anchor) of every block
        self.blocks = np.array([(starts[e], ends[e], lo, min(lo + block_frames, ends[e]))
                                for e in episodes for lo in range(starts[e], ends[e], block_frames)], np.int64)
        self.n_windows = int(sum(ends[episodes] - starts[episodes]))

    def __len__(self) -> int:
        """Batches per epoch over all workers (exact when drop_last is False or one worker runs)."""
        return (self.n_windows // self.batch_size) if self.drop_last else math.ceil(self.n_windows / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        # The same permutation in every worker of one epoch, a new one each epoch: persistent workers
        # count epochs in their own copy; fresh workers get a new base seed from the DataLoader.
        base = (info.seed - info.id) % 2**63 if info else 0
        order = np.random.default_rng([self.seed, base, self.epoch]).permutation(len(self.blocks))
        self.epoch += 1
        mine = self.blocks[order[worker::n_workers]]
        rng = np.random.default_rng([self.seed, base, self.epoch, worker])
        carry = None
        with DemoStore.open(self.path) as store:
            for g in range(0, len(mine), self.blocks_per_shuffle):
                arrays, index = self._read_group(store, mine[g: g + self.blocks_per_shuffle])
                rows = rng.permutation(len(index))
                if carry is not None:  # finish the batch the previous group started
                    need = self.batch_size - len(carry["action"])
                    carry = concat_batches(carry, self.gather(arrays, index, rows[:need]))
                    rows = rows[need:]
                    if len(carry["action"]) < self.batch_size:
                        continue
                    yield carry
                    carry = None
                full = len(rows) - len(rows) % self.batch_size
                for i in range(0, full, self.batch_size):
                    yield self.gather(arrays, index, rows[i: i + self.batch_size])
                if full < len(rows):
                    carry = self.gather(arrays, index, rows[full:])
        if carry is not None and not self.drop_last:
            yield carry

    def _read_group(self, store: DemoStore, blocks: np.ndarray) -> tuple[dict[str, np.ndarray], WindowIndex]:
        """Read the frames a group of blocks needs into one buffer per key; index windows into it."""
        spec, parts, idx_parts, offset = self.gather.spec, [], [], 0
        for ep_start, ep_end, lo, hi in blocks:
            r0 = max(ep_start, lo - spec.context - 1)
            r1 = min(ep_end, hi + spec.horizon - spec.n_obs + 1)
            parts.append({k: store.read(k, r0, r1) for k in self.gather.keys})
            n = hi - lo
            shift = offset - r0  # maps store frame indices into this buffer
            idx_parts.append(windows_at(np.arange(lo, hi) + shift, np.full(n, ep_start + shift),
                                        np.full(n, ep_end + shift), spec))
            offset += r1 - r0
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in self.gather.keys}
        # frames outside [r0, r1) are never indexed: clipping to the episode keeps indices inside the read range
        cat = lambda name: None if getattr(idx_parts[0], name) is None else \
            np.concatenate([getattr(p, name) for p in idx_parts])  # noqa: E731
        return arrays, WindowIndex(cat("anchor"), cat("obs"), cat("action"), cat("past_act"))


class NaiveWindows(torch.utils.data.Dataset):
    """Baseline: each window read from zarr by itself (Diffusion Policy's per-sample dataset)."""

    def __init__(self, path: str | Path, gather: WindowGather, episodes: np.ndarray | None = None):
        self.path, self.gather = str(path), gather
        with DemoStore.open(self.path) as store:
            self.index = window_index(store.episode_ends, gather.spec, episodes)
        self._store: DemoStore | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        if self._store is None:  # opened lazily, inside the worker
            self._store = DemoStore.open(self.path)
        rows = np.array([i])
        lo = int(min(self.index.obs[i].min(), self.index.action[i].min()))
        before = None
        if self.gather.spec.past_act:
            before = self.index.past_act[rows]
            if (before != NO_ACTION).any():
                lo = min(lo, int(before[before != NO_ACTION].min()))
            before = np.where(before == NO_ACTION, NO_ACTION, before - lo)
        hi = int(max(self.index.obs[i].max(), self.index.action[i].max())) + 1
        arrays = {k: self._store.read(k, lo, hi) for k in self.gather.keys}
        local = WindowIndex(self.index.anchor[rows] - lo, self.index.obs[rows] - lo, self.index.action[rows] - lo,
                            before)
        out = self.gather(arrays, local, np.array([0]))
        return {"obs": {k: v[0] for k, v in out["obs"].items()}, "action": out["action"][0]}


def worker_init(_worker_id: int) -> None:
    """One thread per worker process: the workers are the parallelism."""
    torch.set_num_threads(1)
    try:
        import numcodecs.blosc

        numcodecs.blosc.set_nthreads(1)
    except Exception:  # blosc thread control is an optimization only
        pass


def make_loader(dataset: torch.utils.data.Dataset, num_workers: int = 2, batch_size: int | None = None,
                shuffle: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader whose workers come from a forkserver: zarr's IO thread does not survive a plain fork of
    this process, and spawned workers abort at shutdown under torch 2.14 ("terminate called ...")."""
    kwargs = dict(num_workers=num_workers, worker_init_fn=worker_init if num_workers else None)
    if num_workers:
        kwargs.update(multiprocessing_context="forkserver", persistent_workers=True, prefetch_factor=4)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)


def close_loader(loader: torch.utils.data.DataLoader) -> None:
    """Stop a loader's persistent workers now rather than whenever the garbage collector gets to them."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None
