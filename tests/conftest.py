import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robopolicy.threads import configure_threads

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering, set here, never by the user
configure_threads()  # before anything imports torch: tests slow down by their CPU share beside other jobs

ROOT = Path(__file__).resolve().parents[1]


def make_episode(i: int, length: int | None = None, image: int = 16) -> dict[str, np.ndarray]:
    """A deterministic episode: every value depends only on (i, t), so reruns are byte-equal."""
    rng = np.random.default_rng(i)
    T = length if length is not None else 5 + (i * 7) % 13
    return {
        "image": rng.integers(0, 256, (T, image, image, 3), dtype=np.uint8),
        "state": rng.normal(size=(T, 5)).astype(np.float32),
        "action": rng.uniform(-2, 3, size=(T, 3)).astype(np.float32),
    }


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, as a user runs it (test_console_script_is_installed covers the entry point)."""
    return subprocess.run([sys.executable, "-m", "robopolicy.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


def tree_snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def reach_run(tmp_path_factory):
    """A reach policy trained briefly on 20 expert demos (about 30 s on 2 cores); its success lies between 0.2
    and 0.8 (test_eval asserts it). Evaluation and serving tests share it."""
    from robopolicy.collect import collect
    from robopolicy.config import load_config
    from robopolicy.train.trainer import train

    folder = tmp_path_factory.mktemp("reach")
    store, _, _ = collect("reach", 20, folder / "reach.zarr", progress=False)
    store.close()
    cfg = load_config("diffusion", ["train.steps=200", "policy.diffusion.down_dims=[32,64,128]", "data.batch_size=32",
                                    "train.log_every=100", "train.tensorboard=false"])
    train(cfg, folder / "reach.zarr", folder / "run", progress=False)
    return folder / "run"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def fit_one_chunk(head, n_obs: int, steps: int, lr: float, batch: int, clip: float | None = None):
    """Train a head on one demonstration chunk (8 steps of 2-d actions under one fixed condition of
    n_obs 4-d frames), the overfit acceptance of every head; returns (cond, actions)."""
    import torch

    actions = torch.tanh(torch.randn(1, 8, 2).cumsum(1) * 0.4)
    cond = torch.randn(1, n_obs, 4)
    optim = torch.optim.AdamW(head.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps)
    for _ in range(steps):
        loss = head.loss(cond.expand(batch, -1, -1), actions.expand(batch, -1, -1))
        optim.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(head.parameters(), clip)
        optim.step()
        schedule.step()
    return cond, actions


class InProcessServer:
    """A PolicyServer on a loopback port, its event loop on a thread of this process (``with``)."""

    def __init__(self, policy, **cfg):
        from robopolicy.serve.server import PolicyServer, ServerConfig

        self.server = PolicyServer(policy, ServerConfig(host="127.0.0.1", port=0, **cfg))

    def __enter__(self):
        import asyncio
        import threading

        ready = threading.Event()

        def serve():
            self.loop = asyncio.new_event_loop()
            self.stop = asyncio.Event()
            started = asyncio.Event()
            task = self.loop.create_task(self.server.serve(started, self.stop))
            self.loop.run_until_complete(started.wait())
            ready.set()
            self.loop.run_until_complete(task)
        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(30), "the in-process server did not start"
        self.url = f"ws://127.0.0.1:{self.server.port}"
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)

