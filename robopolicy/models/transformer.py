"""Diffusion Policy's transformer denoiser (DP-T), the one Past-Token Prediction trains.

Action tokens (one per chunk step) go through a pre-norm transformer decoder that cross-attends to
condition tokens [diffusion step, frame 0, ..., frame To-1] — one token per frame, never pooled.
Masks (algorithms.md §1.2, check 7): action self-attention is causal (token i sees tokens <= i), and
action token i sees the step token and frames 0..i only, so a predicted past action cannot be read
off later frames.
"""
from __future__ import annotations

import torch
from torch import nn

from robopolicy.models.unet1d import SinusoidalEmbedding


class TransformerDenoiser(nn.Module):
    def __init__(self, action_dim: int, horizon: int, n_obs: int, cond_dim: int, n_layer: int = 8, n_head: int = 4,
                 n_emb: int = 256, p_drop_emb: float = 0.0, p_drop_attn: float = 0.3):
        super().__init__()
        self.action_in = nn.Linear(action_dim, n_emb)
        self.action_pos = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.step_embed = SinusoidalEmbedding(n_emb)
        self.cond_in = nn.Linear(cond_dim, n_emb)
        self.cond_pos = nn.Parameter(torch.zeros(1, 1 + n_obs, n_emb))
        self.cond_mlp = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        layer = nn.TransformerDecoderLayer(n_emb, n_head, 4 * n_emb, p_drop_attn, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, n_layer)
        self.out = nn.Sequential(nn.LayerNorm(n_emb), nn.Linear(n_emb, action_dim))
        i = torch.arange(horizon)[:, None]
        # True = blocked. Self: token i sees j <= i. Cross: token i sees condition s (0 = step) when s - 1 <= i.
        self.register_buffer("self_mask", torch.arange(horizon)[None, :] > i, persistent=False)
        self.register_buffer("cross_mask", torch.arange(1 + n_obs)[None, :] - 1 > i, persistent=False)
        nn.init.normal_(self.action_pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)

    def forward(self, actions: torch.Tensor, step: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """actions (B, H, Da), step (B,) or (1,), cond (B, To, D) -> predicted noise (B, H, Da)."""
        b = actions.shape[0]
        step_token = self.step_embed(step.expand(b))[:, None]
        memory = self.cond_mlp(self.drop(torch.cat([step_token, self.cond_in(cond)], dim=1) + self.cond_pos))
        x = self.drop(self.action_in(actions) + self.action_pos)
        x = self.decoder(x, memory, tgt_mask=self.self_mask, memory_mask=self.cross_mask)
        return self.out(x)
