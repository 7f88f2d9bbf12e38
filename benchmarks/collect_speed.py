"""Collection speed of every task's scripted expert, state and image observations (episodes/min).

    python benchmarks/collect_speed.py [EPISODES]

Runs `robopolicy collect` into a temporary folder, for each task and observation mode.
"""
import sys
import tempfile
import time
from pathlib import Path

from robopolicy import envs
from robopolicy.collect import collect

episodes = int(sys.argv[1]) if len(sys.argv) > 1 else 10
print(f"{'task':<20} {'state ep/min':>12} {'image ep/min':>12} {'frames/episode':>15}")
with tempfile.TemporaryDirectory() as tmp:
    for name in envs.TASKS:
        rates = []
        for obs in ("state", "image"):
            t0 = time.perf_counter()
            store, _, _ = collect(name, episodes, Path(tmp) / f"{name}-{obs}.zarr", obs=obs, progress=False)
            rates.append(episodes / (time.perf_counter() - t0) * 60)
            frames = store.n_frames / store.n_episodes
        print(f"{name:<20} {rates[0]:>12.0f} {rates[1]:>12.1f} {frames:>15.0f}", flush=True)
