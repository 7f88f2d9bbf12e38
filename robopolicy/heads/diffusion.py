"""Diffusion head (Diffusion Policy): an action chunk denoised from Gaussian noise, conditioned on
per-frame observation features.

Training: DDPM with 100 steps, squaredcos_cap_v2 betas, epsilon prediction, clipped samples; the
loss is the noise MSE averaged over the supervised tokens and action dimensions, every token
weighted the same (no lambda): Diffusion Policy supervises tokens [To-1, H), Past-Token Prediction
all H (its past tokens are noised targets like the future ones, never clean inputs).
Sampling: DDIM with few steps (or DDPM with all 100), K candidates per observation in one batch.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from einops import rearrange
from torch import nn

from robopolicy.errors import ConfigError
from robopolicy.heads.config import DiffusionHeadConfig
from robopolicy.heads.sampling import Known, candidate_generators, row_generators, row_noise
from robopolicy.models.transformer import TransformerDenoiser
from robopolicy.models.unet1d import ConditionalUnet1D


class DiffusionHead(nn.Module):
    def __init__(self, action_dim: int, horizon: int, n_obs: int, cond_dim: int, cfg: DiffusionHeadConfig,
                 first_supervised: int | None = None):
        """``first_supervised``: the first chunk token the loss covers (default: 0 with ``supervise_past``,
        else the current token, To-1)."""
        super().__init__()
        if cfg.sampler not in ("ddim", "ddpm"):
            raise ConfigError(f"diffusion sampler must be 'ddim' or 'ddpm', got {cfg.sampler!r}")
        self.cfg, self.action_dim, self.horizon, self.n_obs = cfg, action_dim, horizon, n_obs
        self.capabilities = cfg.capabilities()
        if cfg.denoiser == "unet":
            self.denoiser = ConditionalUnet1D(action_dim, n_obs * cond_dim, cfg.down_dims, cfg.kernel_size,
                                              cfg.n_groups, cfg.step_embed_dim)
        elif cfg.denoiser == "transformer":
            self.denoiser = TransformerDenoiser(action_dim, horizon, n_obs, cond_dim, cfg.n_layer, cfg.n_head,
                                                cfg.n_emb, p_drop_attn=cfg.p_drop_attn)
        else:
            raise ConfigError(f"denoiser must be 'unet' or 'transformer', got {cfg.denoiser!r}")
        self.noise_schedule = DDPMScheduler(num_train_timesteps=cfg.train_steps, **cfg.scheduler_kwargs)
        first = first_supervised if first_supervised is not None else (0 if cfg.supervise_past else n_obs - 1)
        self.register_buffer("token_weight", (torch.arange(horizon) >= first).float(), persistent=False)

    def loss(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """cond (B, To, D) per-frame features, actions (B, H, Da) normalized to [-1, 1]."""
        noise = torch.randn_like(actions)
        steps = torch.randint(0, self.cfg.train_steps, (actions.shape[0],), device=actions.device)
        noisy = self.noise_schedule.add_noise(actions, noise, steps)
        error = (self.denoiser(noisy, steps, self._condition(cond)) - noise) ** 2
        weight = self.token_weight[None, :, None]
        return (error * weight).sum() / (weight.sum() * actions.shape[0] * actions.shape[2])

    def sample(self, cond: torch.Tensor, k: int = 1, generators=None, known: Known | None = None
               ) -> tuple[torch.Tensor, dict]:
        """K candidate chunks per observation: (B, K, H, Da), and an (empty) info dict. ``generators``: one
        torch.Generator per row; each candidate draws its noise (the start, and DDPM's per-step noise)
        from its row's generator by itself, so a row's draws do not depend on the rest of the batch.
        ``known``: tokens inpainted (``_inpaint``), the rest of the chunk denoised to follow on from them."""
        with torch.inference_mode():
            batch = cond.shape[0]
            generators = row_generators(generators, batch)
            condition = self._condition(cond).repeat_interleave(k, dim=0)
            x = row_noise(generators, k, (self.horizon, self.action_dim), cond.device)
            scheduler, step_generators = self._sampler(), candidate_generators(generators, k)
            known, start = (None, None) if known is None else (known.per_candidate(k), x)
            for t in scheduler.timesteps:
                if known is not None:
                    x = self._inpaint(x, t, condition, known, start, scheduler)
                eps = self.denoiser(x, t.to(cond.device).reshape(1), condition)
                x = scheduler.step(eps, t, x, generator=step_generators).prev_sample
            if known is not None:
                x = known.apply(x)
            return rearrange(x, "(b k) t a -> b k t a", k=k), {}

    def _inpaint(self, x, t, condition, known: Known, start, scheduler) -> torch.Tensor:
        """Before denoising step t: the known tokens set to the known actions noised to t's level (with the
        candidate's own starting noise, so nothing extra is drawn), then the whole chunk nudged so that the
        denoiser's clean estimate agrees with them (guided inpainting, as real-time chunking does it;
        replacement alone leaves free tokens ignoring the known ones):

            x -= w * alphas_cumprod[t] * grad_x ||mask * (x0_hat(x) - known)||^2

        The level factor makes it a step of about the same size in x0's space at every noise level (the raw
        gradient grows like 1 / alphas_cumprod[t], which would blow up at DDPM's noisiest steps). Rows
        without known tokens: gradient 0, x kept bit for bit."""
        level = scheduler.alphas_cumprod[t].to(x.device)
        x = known.apply(x, level.sqrt() * known.values + (1 - level).sqrt() * start)
        w = self.cfg.inpaint_guidance
        if w <= 0:
            return x
        with torch.inference_mode(False), torch.enable_grad():  # clones: inference tensors cannot enter autograd
            xg, values, mask = x.clone().requires_grad_(), known.values.clone(), known.mask.clone()
            eps = self.denoiser(xg, t.to(x.device).reshape(1), condition.clone())
            x0 = (xg - (1 - level).sqrt() * eps) / level.sqrt()
            (grad,) = torch.autograd.grad(((x0 - values) ** 2 * mask).sum(), xg)
        return x - (w * level) * grad.detach()

    def _condition(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, To, D) per-frame features as the denoiser takes them."""
        return cond.flatten(1) if self.cfg.denoiser == "unet" else cond

    def _sampler(self):
        """A fresh scheduler per call: diffusers schedulers keep per-run state."""
        if self.cfg.sampler == "ddpm":
            scheduler = DDPMScheduler(num_train_timesteps=self.cfg.train_steps, **self.cfg.scheduler_kwargs)
            scheduler.set_timesteps(self.cfg.train_steps)
        else:
            scheduler = DDIMScheduler(num_train_timesteps=self.cfg.train_steps, **self.cfg.scheduler_kwargs)
            scheduler.set_timesteps(self.cfg.inference_steps)
        return scheduler
