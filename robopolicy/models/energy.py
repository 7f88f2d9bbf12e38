"""EBT-Policy's networks (algorithms.md §2.2): an observation temporal encoder and an energy transformer.

Both are stacks of pre-RMSNorm blocks with qk-norm. The temporal encoder turns per-frame features
into one token per frame under a causal mask. The energy transformer embeds an action trajectory
(input MLP + fixed sin-cos positions), attends over it bidirectionally and cross-attends to the
observation tokens (action token t sees observation step s iff t >= s), and outputs Da numbers per
token; the energy is their mean, one scalar per sample.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with RMS-normalized queries and keys (qk-norm)."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // n_head), nn.RMSNorm(dim // n_head)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (Tx, Tc), True = may attend."""
        b, t, d = x.shape
        heads = lambda y: rearrange(y, "b t (h e) -> b h t e", h=self.n_head)  # noqa: E731
        q = self.q_norm(heads(self.q(x)))
        k, v = self.kv(context).chunk(2, dim=-1)
        # written out rather than F.scaled_dot_product_attention: training differentiates through the
        # energy's gradient, and the fused attention kernels have no second derivative
        scores = q @ self.k_norm(heads(k)).transpose(-1, -2) / math.sqrt(d // self.n_head)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        y = scores.softmax(dim=-1) @ heads(v)
        return self.out(rearrange(y, "b h t e -> b t (h e)"))


class Block(nn.Module):
    """Pre-RMSNorm self-attention, optional cross-attention, and an MLP (GELU-tanh)."""

    def __init__(self, dim: int, n_head: int, mlp_ratio: float, cross: bool):
        super().__init__()
        self.norm1, self.attn = nn.RMSNorm(dim), Attention(dim, n_head)
        self.cross = Attention(dim, n_head) if cross else None
        self.norm_cross = nn.RMSNorm(dim) if cross else None
        hidden = int(dim * mlp_ratio)
        self.norm2 = nn.RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x, self_mask=None, context=None, cross_mask=None):
        h = self.norm1(x)
        x = x + self.attn(h, h, self_mask)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), context, cross_mask)
        return x + self.mlp(self.norm2(x))


class ObsTemporalEncoder(nn.Module):
    """(B, To, D) per-frame features -> (B, To, dim): linear, learned positions, causal blocks."""

    def __init__(self, cond_dim: int, n_obs: int, dim: int, n_layer: int, n_head: int):
        super().__init__()
        self.inp = nn.Linear(cond_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, n_obs, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, n_head, 1.0, cross=False) for _ in range(n_layer))  # MLP width = dim
        self.norm = nn.RMSNorm(dim)
        self.register_buffer("mask", torch.ones(n_obs, n_obs, dtype=torch.bool).tril(), persistent=False)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        x = self.inp(cond) + self.pos
        for block in self.blocks:
            x = block(x, self.mask)
        return self.norm(x)


def sincos(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
    return table


class EnergyTransformer(nn.Module):
    """E(o, a): (B, Tp, Da) actions and (B, To, dim) observation tokens -> (B,) energies."""

    def __init__(self, action_dim: int, horizon: int, n_obs: int, dim: int, n_layer: int, n_head: int):
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(action_dim, dim), nn.RMSNorm(dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(dim, dim))
        self.register_buffer("pos", sincos(horizon, dim)[None], persistent=False)  # fixed, not learned
        self.blocks = nn.ModuleList(Block(dim, n_head, 4.0, cross=True) for _ in range(n_layer))
        self.final = nn.Sequential(nn.RMSNorm(dim), nn.Linear(dim, dim), nn.GELU(approximate="tanh"),
                                   nn.Linear(dim, action_dim))
        # action token t may attend observation step s iff t >= s
        self.register_buffer("cross_mask", torch.arange(horizon)[:, None] >= torch.arange(n_obs)[None, :],
                             persistent=False)

    def forward(self, actions: torch.Tensor, obs_tokens: torch.Tensor) -> torch.Tensor:
        x = self.inp(actions) + self.pos
        for block in self.blocks:
            x = block(x, None, obs_tokens, self.cross_mask)  # bidirectional over actions
        return self.final(x).mean(dim=(-1, -2))  # one scalar per sample: the mean over Tp x Da outputs
