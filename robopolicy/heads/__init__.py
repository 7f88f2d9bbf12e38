"""Action heads: the interface every head implements, declared here, and the one place heads are registered.

A head is a torch module with
- ``loss(cond (B, To, D), actions (B, H, Da)) -> scalar``: its training loss on normalized actions;
- ``sample(cond, k, generators, known=None) -> (candidates (B, K, H, Da), info)``: K candidate chunks per row,
  each row drawing from its own generator (sampling.py), ``known`` tokens kept exactly (real-time chunking);
- ``capabilities``: what it reports or can do beyond that, declared by its config (``section.capabilities()``,
  so known without building it). The verifier, the policy, the server and the results read these, never a
  head's name.

The heads: diffusion.py (Diffusion Policy), ptp.py (Past-Token Prediction), ebt.py (EBT-Policy). Their configs
live in config.py and this module imports no torch, so reading a config loads no model code.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from robopolicy.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from robopolicy.heads.sampling import Known


@dataclass(frozen=True)
class Capabilities:
    self_scores: bool = False  # info["scores"] (B, K): its own score of each candidate, lower is better (EBT: energy)
    predicts_past: bool = False  # info["past"] (B, K, To-1, Da): each candidate's predicted past, trained to match
    refines: bool = False  # sample(..., init=candidates, steps=n) continues their optimization from where they stand


class Head(Protocol):
    capabilities: Capabilities

    def loss(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor: ...

    def sample(self, cond: torch.Tensor, k: int = 1, generators: Any = None, known: Known | None = None
               ) -> tuple[torch.Tensor, dict]: ...


# name -> (module, class); each reads its own section of ``policy`` (policy.diffusion, policy.ptp, policy.ebt)
HEADS = {"diffusion": ("robopolicy.heads.diffusion", "DiffusionHead"),
         "ptp": ("robopolicy.heads.ptp", "PTPHead"),
         "ebt": ("robopolicy.heads.ebt", "EBTHead")}


def capabilities(policy: Any) -> Capabilities:
    """What the head a ``policy`` config section names can do, without building it (no torch)."""
    if policy.head not in HEADS:
        raise ConfigError(f"unknown head {policy.head!r}; available: {', '.join(HEADS)}")
    return getattr(policy, policy.head).capabilities()


def build(name: str, section: Any, action_dim: int, horizon: int, n_obs: int, cond_dim: int) -> Head:
    """The head registered as ``name``, built from its config section."""
    if name not in HEADS:
        raise ConfigError(f"unknown head {name!r}; available: {', '.join(HEADS)}")
    module, cls = HEADS[name]
    return getattr(importlib.import_module(module), cls)(action_dim, horizon, n_obs, cond_dim, section)
