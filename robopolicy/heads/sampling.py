"""How every head draws its noise and takes known actions. ``row_noise``: a row's draws never depend on its batch.

Known actions (real-time chunking): ``known = Known(values, mask)`` names chunk tokens whose values are
already fixed (the queued actions a robot executes before the new chunk can arrive); every candidate
returns them exactly and is generated consistent with them (diffusion and PTP inpaint, EBT warm-starts
and re-projects). A row whose mask is all False gets bit for bit what it gets without ``known``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Known:
    """Fixed chunk tokens, per row, in normalized action space."""

    values: torch.Tensor  # (B, H, Da); read only where ``mask`` is True
    mask: torch.Tensor  # (B, H) bool

    def per_candidate(self, k: int) -> Known:
        """Each row's tokens repeated for its K candidates: (B*K, H, Da), (B*K, H, 1); values outside the mask
        zeroed, so whatever they held (even NaN) cannot leak into a loss or a guidance gradient."""
        mask = self.mask.repeat_interleave(k, dim=0)[..., None]
        values = torch.where(mask, self.values.repeat_interleave(k, dim=0), torch.zeros((), dtype=self.values.dtype,
                                                                                       device=self.values.device))
        return Known(values, mask)

    def apply(self, x: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B*K, H, Da) with the known tokens set (to ``values`` if given: e.g. the noised ones); a
        candidate-level Known (``per_candidate``) only."""
        return torch.where(self.mask, self.values if values is None else values, x)


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
