"""`robopolicy bench data`: training-batch throughput, three ways, on one store, in one run.

Prints windows/s (and batches/s) of collated, normalized batches for
  naive     each window read from zarr by itself, DataLoader workers (Diffusion Policy's way)
  streamed  StreamingWindows: contiguous blocks per worker, shuffled across blocks
  RAM       InMemoryWindows: decompressed once, gathered by fancy indexing, main process
and the ratios streamed/naive and RAM/streamed. Each figure is the median of three timed runs.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from robopolicy.config import DataConfig
from robopolicy.data.loaders import (
    InMemoryWindows,
    NaiveWindows,
    StreamingWindows,
    WindowGather,
    close_loader,
    make_loader,
)
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.store import DemoStore
from robopolicy.data.windows import WindowSpec

BATCH = 64
CONFIGS = [WindowSpec(n_obs=2, horizon=16), WindowSpec(n_obs=16, horizon=32)]
TARGET_STREAMED_TO2 = 2000  # windows/s a GPU trainer consumes at To=2 with images


def synthetic_store(path: Path, episodes: int, length: int, size: int = 96, seed: int = 0) -> DemoStore:
    """Noise-free images of a smooth scene with a moving object: they compress about 5x with blosc-zstd,
    less than rendered Meta-World frames do (13x at 64x64), so streaming figures err on the slow side."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    store = DemoStore.create(path, fps=10, extra={"source": {"format": "synthetic benchmark data"}})
    for _ in range(episodes):
        t = np.arange(length, dtype=np.float32)[:, None, None]
        cx = size / 2 + size / 3 * np.sin(t / 20 + rng.uniform(0, 6))
        cy = size / 2 + size / 3 * np.cos(t / 25 + rng.uniform(0, 6))
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 60.0)
        base = (xx + yy)[None] / (2 * size)
        img = np.stack([base * 120 + blob * 200, 80 + blob * 100 + 20 * np.sin(xx / 9)[None],
                        150 - base * 60 + blob * 50], -1)
        img = np.clip(img, 0, 255).astype(np.uint8)
        state = np.cumsum(rng.normal(0, 0.05, (length, 9)), 0).astype(np.float32)
        action = np.tanh(np.cumsum(rng.normal(0, 0.1, (length, 7)), 0)).astype(np.float32)
        store.append_episode({"image": img, "state": state, "action": action})
    return store


def _throughput(batches: Iterable[dict], seconds: float, warmup: int = 3) -> tuple[float, float]:
    """(windows/s, batches/s) over ``seconds`` after ``warmup`` batches."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    n_windows = n_batches = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        n_windows += len(b["action"])
        n_batches += 1
    dt = time.perf_counter() - t0
    return n_windows / dt, n_batches / dt


def _forever(make_epoch) -> Iterator[dict]:
    while True:
        yield from make_epoch()


def _median_of_3(make_iter, seconds: float) -> tuple[float, float]:
    runs = [_throughput(make_iter(), seconds / 3) for _ in range(3)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _measure_loader(dataset, batch_size: int | None, workers: int, seconds: float) -> tuple[float, float]:
    loader = make_loader(dataset, num_workers=workers, batch_size=batch_size, shuffle=batch_size is not None)
    try:
        return _median_of_3(lambda: _forever(lambda: iter(loader)), seconds)
    finally:
        close_loader(loader)


def run_data_bench(store: str | None = None, quick: bool = False, workers: int = 2, seconds: float = 4.0) -> list[dict]:
    seconds = 0.6 if quick else seconds
    with tempfile.TemporaryDirectory() as tmp:
        if store is None:
            episodes, length = (4, 60) if quick else (40, 200)
            print(f"writing a synthetic store: {episodes} episodes x {length} frames, 96x96 images ...", flush=True)
            path = Path(tmp) / "bench.zarr"
            synthetic_store(path, episodes, length).close()
        else:
            path = Path(store)
        with DemoStore.open(path) as s:
            image_keys = [k for k, f in s.schema.items() if f.is_image]
            low_dim = [k for k, f in s.schema.items() if not f.is_image and k not in ("action", "reward", "done")
                       and len(f.shape) == 1]
            stats = Normalizer.for_policy(s.load(low_dim + ["action"]), low_dim, "action", DataConfig().obs_min_span)
            print(f"store {path}: {s.n_episodes} episodes, {s.n_frames} frames, "
                  f"images {[(k, s.schema[k].shape) for k in image_keys]}, {s.size_on_disk() / 1e6:.1f} MB on disk")
            rows = []
            for spec in CONFIGS:
                gather = WindowGather(spec, image_keys + low_dim, "action", stats)
                ram = InMemoryWindows(s, gather)
                rows.append({"To": spec.n_obs, "H": spec.horizon,
                             "ram": _median_of_3(lambda r=ram: _forever(lambda: r.batches(BATCH, seed=1)), seconds),
                             "streamed": _measure_loader(StreamingWindows(path, gather, BATCH), None, workers,
                                                         seconds),
                             "naive": _measure_loader(NaiveWindows(path, gather), BATCH, workers, seconds)})
                print(f"  measured To={spec.n_obs} H={spec.horizon}", flush=True)
    _print_table(rows, workers)
    return rows


def _print_table(rows: list[dict], workers: int) -> None:
    print(f"\ntraining batches (batch {BATCH}, collated + normalized), windows/s (batches/s); "
          f"naive and streamed use {workers} worker processes, RAM the main process; median of 3")
    head = f"{'To':>3} {'H':>3} | {'naive zarr':>17} | {'streamed':>17} | {'RAM':>19} | {'streamed/naive':>14} | " \
           f"{'RAM/streamed':>12}"
    print(head)
    print("-" * len(head))
    for r in rows:
        cell = lambda rate: f"{rate[0]:>8.0f} ({rate[1]:>6.1f})"  # noqa: E731
        print(f"{r['To']:>3} {r['H']:>3} | {cell(r['naive']):>17} | {cell(r['streamed']):>17} | "
              f"{cell(r['ram']):>19} | {r['streamed'][0] / r['naive'][0]:>13.1f}x | "
              f"{r['ram'][0] / r['streamed'][0]:>11.1f}x")
    to2 = next((r for r in rows if r["To"] == 2), None)
    if to2:
        s, m = to2["streamed"][0], to2["ram"][0]
        print(f"\ntargets (To=2): streamed {s:.0f} windows/s (target >= {TARGET_STREAMED_TO2}: "
              f"{'met' if s >= TARGET_STREAMED_TO2 else 'NOT met'}); RAM/streamed {m / s:.1f}x "
              f"(target >= 10x: {'met' if m / s >= 10 else 'NOT met'})")
