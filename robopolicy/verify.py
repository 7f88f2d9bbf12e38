"""Self-verification: which of K candidate chunks to execute, from what the head reports and what the
robot did. The policy hands every row's candidates here; nothing else reads head-specific outputs.

The evidence, in the order it is used (the first one a row has decides; lower scores are better):
1. the head's own score of each candidate (``info["scores"]``; EBT: its energy at the returned actions);
2. the candidate's predicted past against the actions executed at the past frames' timestamps, MSE in
   normalized action space (``info["past"]``; PTP's self-verification, algorithms.md §1.5, check 11);
3. coherence with the previous chunk: MSE between a candidate and the previous chunk's actions still
   queued, aligned by timestep (Bidirectional Decoding's backward coherence): heads with neither.
A row without evidence gets one candidate (sampling K would buy nothing); with evidence, the best of K.
Heads declare what they can report (``head.capabilities``: ``self_scores``, ``predicts_past``), so the verifier
never asks which head it holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from robopolicy.heads import Capabilities


@dataclass
class Evidence:
    """One row's evidence, in normalized action space."""

    executed_past: torch.Tensor | None = None  # (To-1, Da): executed at the past frames' timestamps
    queued: torch.Tensor | None = None  # (L, Da): the previous chunk's actions due from now on


def method(capabilities: Capabilities, evidence: Evidence) -> str | None:
    """Which evidence decides this row: "score", "past", "coherence", or None."""
    if capabilities.self_scores:
        return "score"
    if capabilities.predicts_past:  # until the history reaches back to the first frame: nothing
        return "past" if evidence.executed_past is not None else None
    if evidence.queued is not None and len(evidence.queued):
        return "coherence"
    return None


def scores(how: str | None, candidates: torch.Tensor, info: dict, row: int, evidence: Evidence, n_obs: int
           ) -> torch.Tensor | None:
    """(K,) scores of row ``row``'s candidates (``candidates`` (B, K, H, Da) normalized), lower is better."""
    if how == "score":
        return info["scores"][row]
    if how == "past":
        past = info["past"][row]
        return ((past - evidence.executed_past.to(past.dtype)) ** 2).mean(dim=(-1, -2))
    if how == "coherence":
        # the chunk's current token (To-1) is due now, as is the first queued action
        overlap = candidates[row, :, n_obs - 1: n_obs - 1 + len(evidence.queued)]
        queued = evidence.queued[: overlap.shape[1]].to(overlap.dtype)
        return ((overlap - queued) ** 2).mean(dim=(-1, -2))
    return None
