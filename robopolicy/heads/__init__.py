"""Action heads: diffusion.py, ptp.py, ebt.py, one interface (``loss(cond, actions)``, ``sample(cond, k,
generators)``). ``row_noise`` is how every head draws its noise, so a row's draws never depend on its batch."""
from __future__ import annotations

import torch


def row_generators(generators, batch: int) -> list[torch.Generator]:
    """One generator per row: the list given; or one generator (None: torch's default) shared by every
    row, drawn in row order, so then a row's noise depends on the rows before it."""
    if generators is None or isinstance(generators, torch.Generator):
        return [generators or torch.default_generator] * batch
    generators = list(generators)
    if len(generators) != batch:
        raise ValueError(f"{len(generators)} generators for {batch} rows: pass one per row")
    return generators


def candidate_generators(generators: list[torch.Generator], k: int) -> list[torch.Generator]:
    """Row r's generator once per candidate, in order: candidate j of row r draws r's j-th sample."""
    return [g for g in generators for _ in range(k)]


def row_noise(generators: list[torch.Generator], k: int, shape: tuple[int, ...], device, dtype=torch.float32
              ) -> torch.Tensor:
    """(B*K, *shape) standard normal noise, each candidate drawn from its row's generator by itself."""
    return torch.cat([torch.randn((1, *shape), generator=g, dtype=dtype) for g in candidate_generators(generators, k)]
                     ).to(device)
