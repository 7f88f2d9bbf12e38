"""Diffusion Policy's 1-D temporal U-Net (DP-C): a noisy action chunk in, predicted noise out.

Conv1d blocks (kernel 5, GroupNorm 8, Mish) in residual pairs per resolution, strided-conv down and
transposed-conv up, skip connections, and FiLM conditioning of every block on
[diffusion-step embedding, global condition] (the flattened To-frame observation features).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000) / (half - 1)))
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; the condition scales and shifts the first one's output per channel."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.block1, self.block2 = ConvBlock(c_in, c_out, kernel, groups), ConvBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[..., None].chunk(2, dim=1)
        return self.block2(scale * self.block1(x) + shift) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    def __init__(self, action_dim: int, global_cond_dim: int, down_dims: Sequence[int] = (256, 512, 1024),
                 kernel_size: int = 5, n_groups: int = 8, step_embed_dim: int = 256):
        super().__init__()
        self.step_encoder = nn.Sequential(SinusoidalEmbedding(step_embed_dim),
                                          nn.Linear(step_embed_dim, 4 * step_embed_dim), nn.Mish(),
                                          nn.Linear(4 * step_embed_dim, step_embed_dim))
        cond_dim = step_embed_dim + global_cond_dim
        dims = [action_dim, *down_dims]
        levels = list(zip(dims[:-1], dims[1:]))
        block = lambda i, o: FiLMResidualBlock(i, o, cond_dim, kernel_size, n_groups)  # noqa: E731
        self.down = nn.ModuleList([nn.ModuleList([block(i, o), block(o, o),
                                                  nn.Conv1d(o, o, 3, 2, 1) if k < len(levels) - 1 else nn.Identity()])
                                   for k, (i, o) in enumerate(levels)])
        self.mid = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        # the deepest level's output is the first skip; the shallowest level's is never used (as in DP)
        self.up = nn.ModuleList([nn.ModuleList([block(2 * o, i), block(i, i), nn.ConvTranspose1d(i, i, 4, 2, 1)])
                                 for i, o in reversed(levels[1:])])
        self.out = nn.Sequential(ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                 nn.Conv1d(down_dims[0], action_dim, 1))
        self.downsamplings = len(levels) - 1

    def forward(self, actions: torch.Tensor, step: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """actions (B, H, Da), step (B,), global_cond (B, C) -> predicted noise (B, H, Da)."""
        if actions.shape[1] % (2 ** self.downsamplings):
            raise ValueError(f"horizon {actions.shape[1]} must be divisible by {2 ** self.downsamplings} "
                             f"({self.downsamplings} downsamplings)")
        cond = torch.cat([self.step_encoder(step.expand(actions.shape[0])), global_cond], dim=-1)
        x, skips = rearrange(actions, "b t a -> b a t"), []  # channels first: Conv1d over time
        for block1, block2, downsample in self.down:
            x = block2(block1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        for block1, block2, upsample in self.up:
            x = upsample(block2(block1(torch.cat([x, skips.pop()], dim=1), cond), cond))
        return rearrange(self.out(x), "b a t -> b t a")
