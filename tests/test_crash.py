"""Crash safety: a writer SIGKILLed at random moments never damages committed episodes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_episode
from robopolicy.data.store import DemoStore

WRITER = Path(__file__).with_name("crash_writer.py")
N_EPISODES = 60


def _start(path: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(WRITER), str(path), str(N_EPISODES), *extra],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _assert_committed_equal_clean_run(path: Path) -> int:
    store = DemoStore.open(path)  # must always open
    for i in range(store.n_episodes):
        ep, ref = store.episode(i), make_episode(i)
        assert set(ep) == set(ref)
        for k in ref:
            assert ep[k].dtype == ref[k].dtype and ep[k].tobytes() == ref[k].tobytes(), (i, k)
    return store.n_episodes


@pytest.mark.slow  # 24 random kills, half a minute; the deterministic kill test below stays in the default suite
def test_sigkill_at_random_moments_keeps_committed_episodes(tmp_path):
    clean_start = time.perf_counter()
    subprocess.run([sys.executable, str(WRITER), str(tmp_path / "clean.zarr"), str(N_EPISODES)], check=True,
                   capture_output=True)
    assert _assert_committed_equal_clean_run(tmp_path / "clean.zarr") == N_EPISODES
    write_time = max(time.perf_counter() - clean_start - 0.5, 0.2)  # minus start-up, roughly

    path, rng = tmp_path / "crash.zarr", np.random.default_rng(1234)
    counts, kills, mid_append = [], 0, 0
    while kills < 24:
        proc = _start(path)
        time.sleep(rng.uniform(0, write_time / 6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        counts.append(_assert_committed_equal_clean_run(path))
        store = DemoStore.open(path)
        if "action" in store.keys:  # (a kill while the first append created its arrays leaves some missing)
            mid_append += store.array("action").shape[0] > store.n_frames  # killed between data write and commit
        if counts[-1] == N_EPISODES:  # finished before a kill: start over to keep killing mid-write
            path = tmp_path / f"crash{len(counts)}.zarr"
    interrupted = [c for c in counts if 0 < c < N_EPISODES]
    print(f"\ncrash test: {kills} SIGKILLs, {len(interrupted)} mid-collection, {mid_append} with an episode's data "
          f"written but not committed; committed episodes after each run: {counts}")
    assert len(interrupted) >= 10, counts  # most kills landed mid-collection, not before or after it
    assert any(a < b for a, b in zip(counts, counts[1:])), counts  # re-runs continued from there

    subprocess.run([sys.executable, str(WRITER), str(path), str(N_EPISODES)], check=True, capture_output=True)
    assert _assert_committed_equal_clean_run(path) == N_EPISODES
    clean, resumed = DemoStore.open(tmp_path / "clean.zarr"), DemoStore.open(path)
    assert np.array_equal(clean.episode_ends, resumed.episode_ends)
    for key in clean.keys:
        assert resumed.array(key).shape == clean.array(key).shape


@pytest.mark.parametrize("k", [0, 7])
def test_kill_between_data_write_and_commit(tmp_path, k):
    path, marker = tmp_path / "paused.zarr", tmp_path / "paused"
    proc = _start(path, "--pause-before-commit", str(k), str(marker))
    deadline = time.time() + 60
    while not marker.exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = DemoStore.open(path)
    assert _assert_committed_equal_clean_run(path) == k
    assert store.array("action").shape[0] > store.n_frames  # episode k's frames are there, uncommitted
    assert len(DemoStore.open(path).episode_ends) == k
    subprocess.run([sys.executable, str(WRITER), str(path), str(N_EPISODES)], check=True, capture_output=True)
    assert _assert_committed_equal_clean_run(path) == N_EPISODES
    assert not list(path.rglob("*.partial"))
