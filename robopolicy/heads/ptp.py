"""Past-Token Prediction head (Torne, Tang, Liu, Finn 2025; algorithms.md §1).

Diffusion Policy's transformer denoiser over a long context (one condition token per frame; causal
action self-attention; action token i sees frames 0..i only) whose chunk starts with the To-1 past
actions, taken at the observation frames' timestamps: [a_{t-(To-1)s} .. a_{t-s} | a_t | a_{t+1} ..].
The past tokens are noised and denoised like the future ones (targets, never clean inputs) and the
loss covers them with the same weight as every other token (no lambda). ``sample`` returns the
predicted past with each candidate, which test-time verification compares with what the robot did.

Baselines are configs of this head: ``past_action_pred=false`` (long context, DP's loss over
[To-1, H)), To=2 (no history), and executed past actions as an input (``data.past_act=true``).
"""
from __future__ import annotations

import torch

from robopolicy.heads.config import DiffusionHeadConfig, PTPHeadConfig
from robopolicy.heads.diffusion import DiffusionHead
from robopolicy.heads.sampling import Known


class PTPHead(DiffusionHead):
    def __init__(self, action_dim: int, horizon: int, n_obs: int, cond_dim: int, cfg: PTPHeadConfig):
        diffusion = DiffusionHeadConfig(denoiser="transformer", n_layer=cfg.n_layer, n_head=cfg.n_head,
                                        n_emb=cfg.n_emb, p_drop_attn=cfg.p_drop_attn, train_steps=cfg.train_steps,
                                        sampler=cfg.sampler, inference_steps=cfg.inference_steps,
                                        inpaint_guidance=cfg.inpaint_guidance,
                                        scheduler_kwargs=dict(cfg.scheduler_kwargs))
        super().__init__(action_dim, horizon, n_obs, cond_dim, diffusion, cfg.first_supervised(n_obs))
        self.ptp = cfg
        self.capabilities = cfg.capabilities()

    def sample(self, cond: torch.Tensor, k: int = 1, generators=None, known: Known | None = None
               ) -> tuple[torch.Tensor, dict]:
        """K candidate chunks (B, K, H, Da); info["past"] (B, K, To-1, Da): each candidate's predicted past.
        ``known``: inpainted as the diffusion head does. The policy only ever fixes tokens from To-1 on (the
        committed queue): the past tokens stay free, so each candidate's predicted past is still its own
        and verifying it against what the robot did still tells candidates apart (inpainting the executed
        past there would score every candidate zero)."""
        chunks, info = super().sample(cond, k, generators, known)
        return chunks, {**info, "past": chunks[:, :, : self.n_obs - 1]}


__all__ = ["PTPHead", "PTPHeadConfig"]
