"""torch's CPU threads, set once before torch starts its thread pools: the CLI's entry and the tests' conftest
call ``configure_threads()`` first, and child processes (servers, env and loader workers) inherit it.

One thread per process. torch's default, one OpenMP thread per core that spins at every barrier, is barely
faster alone but collapses beside another job on the same cores: a thread waiting for a descheduled partner
spins its time slice away. Measured on 2 cores, a small PTP training loop alone vs beside 2 busy processes:
default 2.7 s -> 21 s (7.5x; 23x at worst), one thread 3.1 s -> 5.5 s (1.8x); OMP_WAIT_POLICY=PASSIVE with 2 threads
halves the loop's speed alone. Image training alone is the cost: 5.7 vs 7.7 samples/s on 2 idle cores; on a
machine of your own, OMP_NUM_THREADS=N (it wins over this default) takes it back."""
from __future__ import annotations

import os
import sys

THREADS = 1  # intra-op threads per process, unless OMP_NUM_THREADS says otherwise


def configure_threads() -> None:
    """An environment variable, not a torch call: OpenMP reads it when torch loads, and subprocesses inherit
    it; and no torch import (the robot side has none)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    if "torch" in sys.modules:  # torch already loaded: too late for the environment
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
