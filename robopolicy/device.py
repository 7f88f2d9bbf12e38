"""The one device choice: "auto" is CUDA when there is one, else the CPU; under torchrun, one GPU per process."""
from __future__ import annotations

import os

import torch


def choose(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``name``: "auto", "cpu", "cuda" or "cuda:N"; ``local_rank`` (default: torchrun's LOCAL_RANK) picks the GPU
    of this process when there are several."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.device_count() > 1:
        rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
        return torch.device("cuda", rank)  # one GPU per torchrun process
    return torch.device(name)
