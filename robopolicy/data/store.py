"""DemoStore: demonstrations in a zarr v3 store, appended one episode at a time, crash-safe.

Layout (Diffusion Policy's ReplayBuffer layout; their stores, zarr 2 or 3, open here read-only):

    data/<key>          [T_total, ...]  all episodes concatenated along time, chunked along time
    meta/episode_ends   [n_episodes]    int64, cumulative end index of each episode
    attrs["robopolicy"] {format, n_episodes, schema, fps, env_spec, extra}

Commit protocol. An append writes the episode's frames past the committed end, then episode_ends,
and last the root attribute ``n_episodes``: that single metadata file is the commit. zarr's
LocalStore replaces every file atomically (write to a temporary file, then rename), so a chunk
shared with the previous episode is always either its old or its new version, never half of one.
A writer killed at any moment leaves a store whose committed episodes are intact; the next append
overwrites whatever the interrupted one left past the committed end.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync

from robopolicy.errors import SchemaError, StoreError

FORMAT_VERSION = 1
CHUNK_TARGET_BYTES = 256 * 1024  # one chunk ~ a few images: cheap random reads, good compression
MAX_CHUNK_ROWS = 4096
# Every chunk gets a file, even an all-zero one, so a missing file always means damage.
_ALWAYS_WRITE = {"write_empty_chunks": True}


@dataclass(frozen=True)
class Field:
    """Per-frame shape and dtype of one key."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def is_image(self) -> bool:
        return self.dtype == np.uint8 and len(self.shape) == 3 and self.shape[-1] in (1, 3, 4)

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype.str}

    @staticmethod
    def from_json(d: Mapping) -> Field:
        return Field(tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]))


def chunk_rows(field: Field) -> int:
    """Frames per chunk: a power of two near CHUNK_TARGET_BYTES."""
    frame_bytes = max(1, int(np.prod(field.shape, dtype=np.int64)) * field.dtype.itemsize)
    rows = 2 ** int(math.floor(math.log2(max(1, CHUNK_TARGET_BYTES // frame_bytes))))
    return int(min(max(rows, 1), MAX_CHUNK_ROWS))


def _compressor(field: Field) -> BloscCodec:
    shuffle = "noshuffle" if field.dtype.itemsize == 1 else "shuffle"
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


def _open_zarr_group(path: Path, writable: bool) -> zarr.Group:
    """Open a directory or .zip zarr group (format 2 or 3), or raise one clear StoreError."""
    if not path.exists():
        raise StoreError(
            f"{path}: no such demo store. Check the path, or make one: `robopolicy collect --task T --episodes N "
            f"--out {path}` (scripted demos) or `robopolicy import` (another format)."
        )
    try:
        if path.is_file():
            if path.suffix != ".zip":
                raise StoreError(f"{path}: is a file, not a demo store (a .zarr folder or a .zarr.zip file).")
            if writable:
                raise StoreError(f"{path}: .zarr.zip stores are read-only here; import it into a folder store "
                                 f"with `robopolicy import dp {path} --out STORE`.")
            return zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
        if not ((path / "zarr.json").exists() or (path / ".zgroup").exists()):
            raise StoreError(f"{path}: is a folder but not a zarr store (no zarr.json or .zgroup in it). "
                             "Point at the store folder itself (for example datasets/task.zarr).")
        return zarr.open_group(str(path), mode="r+" if writable else "r")
    except StoreError:
        raise
    except Exception as e:  # zarr raises many types for damaged metadata
        raise StoreError(f"{path}: store metadata cannot be read ({type(e).__name__}: {e}). "
                         "The store is damaged; restore it from a copy or make it again.") from None


class DemoStore:
    """A demo store on disk. Use ``DemoStore.create`` or ``DemoStore.open``."""

    # Test hook: called after an episode's data is written and before it is committed.
    _before_commit: Callable[[int], None] | None = None

    def __init__(self, path: Path, group: zarr.Group, writable: bool, lock_fd: int | None = None):
        self.path = path
        self._group = group
        self.writable = writable
        self._lock_fd = lock_fd
        self._meta: dict[str, Any] = dict(group.attrs.get("robopolicy", {}))
        self._load_index()

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: str | os.PathLike, *, fps: float | None = None, env_spec: Mapping | None = None,
               schema: Mapping[str, Field] | None = None, extra: Mapping | None = None) -> DemoStore:
        """Create an empty store at ``path`` (which must not exist). The schema is fixed by
        ``schema`` or, if omitted, by the first appended episode."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path}: already exists. Append to it with DemoStore.open(path, mode='a'), "
                             "or choose a new path; nothing was changed.")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Built beside its final place and renamed into it: a store exists whole or not at all.
        building = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:8]}")
        group = zarr.open_group(str(building), mode="w-", zarr_format=3)
        group.create_group("data")
        group.create_group("meta").create_array("episode_ends", shape=(0,), dtype="int64", chunks=(4096,),
                                                fill_value=0, config=_ALWAYS_WRITE)
        meta = {"format": FORMAT_VERSION, "n_episodes": 0, "schema": None,
                "fps": fps, "env_spec": dict(env_spec) if env_spec else None, "extra": dict(extra or {})}
        group.attrs["robopolicy"] = json.loads(json.dumps(meta))  # fail early on non-JSON values
        if schema is not None:
            group.attrs["robopolicy"] = {**meta, "schema": {k: f.to_json() for k, f in schema.items()}}
            _create_arrays(group, schema)
        os.rename(building, path)
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> DemoStore:
        """Open a store for reading (``mode='r'``) or appending (``mode='a'``)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        group = _open_zarr_group(path, writable=(mode == "a"))
        if "data" not in group or "meta" not in group or "episode_ends" not in group["meta"]:
            raise StoreError(f"{path}: is a zarr group but not a demo store (it needs data/<key> arrays "
                             "and meta/episode_ends).")
        lock_fd = None
        if mode == "a":
            lock_fd = os.open(path / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                raise StoreError(f"{path}: another process is writing to this store; wait for it to finish.") \
                    from None
            _remove_partial_writes(path)
        return cls(path, group, writable=(mode == "a"), lock_fd=lock_fd)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> DemoStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load_index(self) -> None:
        """Read episode_ends up to the committed count and check it against the data arrays."""
        ends_arr = self._group["meta/episode_ends"]
        n = self._meta.get("n_episodes", ends_arr.shape[0])  # stores written elsewhere: all of it
        if n > ends_arr.shape[0]:
            raise StoreError(f"{self.path}: metadata says {n} episodes but meta/episode_ends holds "
                             f"{ends_arr.shape[0]}. The store is damaged; restore it from a copy.")
        ends = self._read_array(ends_arr, 0, n).astype(np.int64) if n else np.zeros(0, np.int64)
        if n and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            raise StoreError(f"{self.path}: meta/episode_ends is not strictly increasing. "
                             "The store is damaged; restore it from a copy.")
        end = int(ends[-1]) if n else 0
        for key in self.keys:
            if self._group["data"][key].shape[0] < end:
                raise StoreError(f"{self.path}: data/{key} has {self._group['data'][key].shape[0]} frames but "
                                 f"episodes end at {end}. The store is damaged; restore it from a copy.")
        self._ends = ends

    # --------------------------------------------------------------- reading
    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self._ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self._ends])).astype(np.int64)

    @property
    def n_frames(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def keys(self) -> list[str]:
        return sorted(self._group["data"].array_keys())

    @property
    def schema(self) -> dict[str, Field]:
        if self._meta.get("schema"):
            return {k: Field.from_json(v) for k, v in self._meta["schema"].items()}
        return {k: Field(tuple(a.shape[1:]), np.dtype(a.dtype)) for k, a in self._group["data"].arrays()}

    @property
    def fps(self) -> float | None:
        return self._meta.get("fps")

    @property
    def env_spec(self) -> dict | None:
        return self._meta.get("env_spec")

    @property
    def extra(self) -> dict:
        """Free-form provenance (importer source, filter keys, ...)."""
        return dict(self._meta.get("extra", {}))

    def array(self, key: str) -> zarr.Array:
        self._check_key(key)
        return self._group["data"][key]

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Frames [start, stop) of ``key``; a damaged chunk raises one clear StoreError."""
        return self._read_array(self.array(key), start, stop)

    def episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range: the store holds {self.n_episodes} episodes")
        i %= self.n_episodes
        start, stop = int(self.episode_starts[i]), int(self._ends[i])
        return {k: self.read(k, start, stop) for k in (keys or self.keys)}

    def load(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Every committed frame of ``keys`` decompressed into RAM."""
        return {k: self.read(k, 0, self.n_frames) for k in (keys or self.keys)}

    def size_on_disk(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def check(self, progress: bool = False) -> list[str]:
        """Read every committed chunk; return one line per problem (missing or undecodable chunks)."""
        from tqdm import tqdm

        problems = []
        for key in self.keys:
            arr = self.array(key)
            rows = arr.chunks[0]
            n_chunks = -(-self.n_frames // rows)
            missing = {c for c in range(n_chunks) if not _chunk_exists(arr, c)}
            if missing:
                problems.append(f"data/{key}: {len(missing)} chunk file(s) missing (frames "
                                f"{min(missing) * rows}-{min((min(missing) + 1) * rows, self.n_frames) - 1} first); "
                                "they would read as zeros")
            for c in tqdm(range(n_chunks), desc=f"check {key}", disable=not progress, leave=False):
                if c in missing:
                    continue
                try:
                    self.read(key, c * rows, min((c + 1) * rows, self.n_frames))
                except StoreError as e:
                    problems.append(str(e).split(". The store")[0])
        return problems

    def _read_array(self, arr: zarr.Array, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(arr[start:stop])
        except Exception as e:
            raise StoreError(f"{self.path}: {arr.path} frames {start}-{stop - 1} cannot be decoded "
                             f"({type(e).__name__}: {e}). The store is damaged; re-collect or re-import it, "
                             "or restore it from a copy (`robopolicy info --check` lists every damaged chunk).") \
                from None

    def _check_key(self, key: str) -> None:
        if key not in self._group["data"]:
            raise StoreError(f"{self.path}: has no key {key!r}; it holds {', '.join(self.keys)}.")

    # --------------------------------------------------------------- writing
    def append_episode(self, episode: Mapping[str, np.ndarray]) -> int:
        """Append one episode atomically; returns its index."""
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only; use DemoStore.open(path, mode='a') to append.")
        episode = {k: np.asarray(v) for k, v in episode.items()}
        schema = self.schema if (self._meta.get("schema") or self.n_episodes) else None
        if schema is None:  # the first episode fixes the schema, written before any array exists
            schema = {k: Field(tuple(v.shape[1:]), v.dtype) for k, v in episode.items()}
            _validate_episode(episode, schema, self.path)
            self._write_meta(schema={k: f.to_json() for k, f in schema.items()})
        length = _validate_episode(episode, schema, self.path)
        missing = {k: f for k, f in schema.items() if k not in self._group["data"]}
        if missing:  # a writer killed while creating the arrays
            _create_arrays(self._group, missing)

        start = self.n_frames
        stop = start + length
        data = self._group["data"]
        for key, value in episode.items():
            arr = data[key].with_config(_ALWAYS_WRITE)  # runtime setting: not stored with the array
            if arr.shape[0] != stop:
                arr.resize((stop,) + arr.shape[1:])  # also drops what an interrupted append left behind
            arr[start:stop] = value
        ends_arr = self._group["meta/episode_ends"].with_config(_ALWAYS_WRITE)
        n = self.n_episodes
        ends_arr.resize((n + 1,))
        ends_arr[n] = stop
        if DemoStore._before_commit is not None:
            DemoStore._before_commit(n)
        self._write_meta(n_episodes=n + 1)  # the commit
        self._ends = np.append(self._ends, stop)
        return n

    def set_extra(self, **items: Any) -> None:
        extra = self.extra
        extra.update(items)
        self._write_meta(extra=extra)

    def _write_meta(self, **changes: Any) -> None:
        self._meta.update(changes)
        self._group.attrs["robopolicy"] = json.loads(json.dumps(self._meta))

    def __repr__(self) -> str:
        return f"DemoStore({str(self.path)!r}, episodes={self.n_episodes}, frames={self.n_frames}, keys={self.keys})"


def _chunk_exists(arr: zarr.Array, index: int) -> bool:
    """Whether the file of time-chunk ``index`` exists (zarr 2 or 3 key encoding)."""
    key = arr.metadata.encode_chunk_key((index,) + (0,) * (arr.ndim - 1))
    return sync(arr.store_path.store.exists(f"{arr.path}/{key}"))


def _validate_episode(episode: Mapping[str, np.ndarray], schema: Mapping[str, Field], path: Path) -> int:
    """Check an episode against the schema; return its length. Raises SchemaError naming the mismatch."""
    missing, unknown = sorted(set(schema) - set(episode)), sorted(set(episode) - set(schema))
    if missing or unknown:
        raise SchemaError(f"{path}: episode keys do not match the store: missing {missing}, unexpected {unknown}. "
                          f"The store holds {sorted(schema)}; nothing was written.")
    lengths = {k: (v.shape[0] if v.ndim else 0) for k, v in episode.items()}
    for key, value in episode.items():
        field = schema[key]
        if value.ndim == 0 or tuple(value.shape[1:]) != field.shape:
            raise SchemaError(f"{path}: episode[{key!r}] has shape {value.shape}, the store holds frames of shape "
                              f"{field.shape} (array shape (T, {', '.join(map(str, field.shape))})); "
                              "nothing was written.")
        if value.dtype != field.dtype:
            raise SchemaError(f"{path}: episode[{key!r}] has dtype {value.dtype}, the store holds {field.dtype}; "
                              f"cast it with .astype(np.{field.dtype.name}). Nothing was written.")
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise SchemaError(f"{path}: every key of an episode needs the same number of frames (> 0), got {lengths}; "
                          "nothing was written.")
    return next(iter(lengths.values()))


def _create_arrays(group: zarr.Group, schema: Mapping[str, Field]) -> None:
    for key, field in schema.items():
        group["data"].create_array(key, shape=(0,) + field.shape, dtype=field.dtype,
                                   chunks=(chunk_rows(field),) + field.shape, compressors=[_compressor(field)],
                                   fill_value=0, overwrite=True, config=_ALWAYS_WRITE)


def _remove_partial_writes(path: Path) -> None:
    """Temporary files of writes a killed writer never renamed into place: garbage by construction."""
    for f in path.rglob("*.partial"):
        f.unlink(missing_ok=True)
