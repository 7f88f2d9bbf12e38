"""EBT-Policy head (energy-based transformer policy; algorithms.md §2.2-2.4).

A scalar energy E(o, a) over an action trajectory, minimized by a few gradient steps from noise:

    y  = rms_norm(a.detach())                       # pre-sample normalization
    y += sigma_i * eps                              # training only: cosine-annealed Langevin noise 0.2 -> 0.002
    look = y + mu * v                               # Nesterov look-ahead, mu = 0.9
    E = energy(look, obs tokens)                    # (B,), mean over the Tp x Da outputs
    alpha_eff = alpha_i * exp(E) / T                # energy-scaled step; alpha_i ~ U[alpha/1.5, 1.5 alpha] in training
    v = mu * v - alpha_eff * dE/dlook ; a = y + v

Training unrolls 6 + U{0..4} steps with second-order gradients (create_graph) and supervises every
iterate (mean of MSE(a_i, a*)); the trainer clips gradients at 1.0 (the ebt configs). With
``warm_start_frac`` a share of training samples starts with a committed prefix of the future known
(real-time chunking's warm start, below). Inference takes ``inference_steps`` (default 2) steps,
stopping early per sample once ||dE/da|| <= min_grad when allowed more, and returns each candidate's
final energy (lower = more confident).

Known actions (real-time chunking): the known tokens start at their values and are re-projected onto
them after every step (the per-sample RMS normalization rescales the whole trajectory, known tokens too),
and their velocity is zeroed, so the look-ahead sees them as they are.

Batch invariance: the reference normalizes y over the whole (B, T, D) tensor (F.rms_norm(x, x.shape)),
so in training a sample's step depends on the rest of its batch. Here the normalization is per sample
by default; ``batch_rms_norm=true`` restores the reference form (used by a faithfulness test).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from robopolicy.errors import ConfigError
from robopolicy.heads.config import EBTHeadConfig
from robopolicy.heads.sampling import Known, row_generators, row_noise
from robopolicy.models.energy import EnergyTransformer, ObsTemporalEncoder


class EBTHead(nn.Module):
    def __init__(self, action_dim: int, horizon: int, n_obs: int, cond_dim: int, cfg: EBTHeadConfig):
        super().__init__()
        if cfg.inference_steps < 1 or cfg.train_steps < 1:
            raise ConfigError("ebt needs inference_steps >= 1 and train_steps >= 1")
        self.cfg, self.action_dim, self.horizon, self.n_obs = cfg, action_dim, horizon, n_obs
        self.capabilities = cfg.capabilities()
        self.obs_encoder = ObsTemporalEncoder(cond_dim, n_obs, cfg.n_emb, cfg.obs_layers, cfg.n_head)
        self.energy = EnergyTransformer(action_dim, horizon, n_obs, cfg.n_emb, cfg.n_layer, cfg.n_head)

    # ----------------------------------------------------------------- one step
    def _normalize(self, a: torch.Tensor) -> torch.Tensor:
        if self.cfg.batch_rms_norm:
            return F.rms_norm(a, a.shape)
        return F.rms_norm(a, a.shape[1:])  # per sample: (T, D)

    def _step(self, a, v, tokens, i: int, n: int, train: bool, generator=None):
        """One energy-gradient step; returns (a, v, energy, grad)."""
        cfg = self.cfg
        y = self._normalize(a.detach().requires_grad_())
        if train:
            sigma = cfg.langevin_min + 0.5 * (cfg.langevin_max - cfg.langevin_min) * (1 + math.cos(math.pi * i / n))
            y = y + sigma * torch.randn_like(y)
        look = y + cfg.momentum * v
        energy = self.energy(look, tokens)
        alpha = max(cfg.step_size, 1e-4)
        if train:
            s = cfg.step_size_jitter
            alpha = torch.empty_like(energy).uniform_(alpha / s, alpha * s)
        alpha_eff = alpha * torch.exp(energy) / cfg.energy_temperature
        (grad,) = torch.autograd.grad(energy.sum(), look, create_graph=train)
        v = cfg.momentum * v - alpha_eff[:, None, None] * grad
        return y + v, v, energy, grad

    # ----------------------------------------------------------------- training
    def loss(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """cond (B, To, D), actions (B, Tp, Da) in [-1, 1]: the mean over unrolled steps of MSE(a_i, a*)."""
        if actions.detach().abs().max() > 1.0 + 1e-5:
            raise ConfigError("EBT trains on actions normalized to [-1, 1]; these reach "
                              f"{actions.detach().abs().max().item():.3f}: normalize actions with minmax statistics")
        tokens = self.obs_encoder(cond)
        n = self.cfg.train_steps + int(torch.randint(0, self.cfg.train_steps_extra + 1, ()).item())
        known = self._training_known(actions)
        a = torch.randn_like(actions)
        v = torch.zeros_like(actions)
        with torch.enable_grad():
            losses = []
            for i in range(n):
                a, v = self._project(known, a, v)
                a, v, _, _ = self._step(a, v, tokens, i, n, train=True)
                a, v = self._project(known, a, v)
                losses.append(F.mse_loss(a, actions))
        return torch.stack(losses).mean()

    def _training_known(self, actions: torch.Tensor) -> Known | None:
        """For ``warm_start_frac`` of the samples, a committed prefix of 1..(H-To+1)/2 future tokens."""
        b, first = actions.shape[0], self.n_obs - 1
        if self.cfg.warm_start_frac <= 0:
            return None
        longest = max((self.horizon - first) // 2, 1)
        d = torch.randint(1, longest + 1, (b, 1), device=actions.device)
        d = d * (torch.rand(b, 1, device=actions.device) < self.cfg.warm_start_frac)
        token = torch.arange(self.horizon, device=actions.device)[None]
        mask = (token >= first) & (token < first + d)
        return Known(actions.detach(), mask[..., None])

    @staticmethod
    def _project(known: Known | None, a: torch.Tensor, v: torch.Tensor):
        """Known tokens back at their values, their velocity zero."""
        if known is None:
            return a, v
        return known.apply(a), torch.where(known.mask, torch.zeros_like(v), v)

    # ----------------------------------------------------------------- inference
    def sample(self, cond: torch.Tensor, k: int = 1, generators=None, known: Known | None = None,
               init: torch.Tensor | None = None, steps: int | None = None) -> tuple[torch.Tensor, dict]:
        """K candidates (B, K, Tp, Da) and info["energy"] / info["scores"] (B, K): each one's energy at the
        actions returned, RMS-normalized as every energy input is (what is executed is what is scored; one
        more energy forward, no gradient).
        ``generators``: one per row (each candidate's start drawn by itself); ``known``: tokens fixed (warm
        start and re-projection, module docstring); ``init`` (B, K, Tp, Da): start from these actions
        instead of noise; ``steps``: the most gradient steps (default ``inference_steps``). Runs with
        autograd on, even inside inference_mode or no_grad."""
        cfg, b = self.cfg, cond.shape[0]
        steps = steps or cfg.inference_steps
        shape = (b * k, self.horizon, self.action_dim)
        with torch.inference_mode(False), torch.enable_grad():
            cond = cond.clone()  # a tensor made under inference_mode cannot enter autograd; its clone here can
            if init is None:
                a = row_noise(row_generators(generators, b), k, shape[1:], cond.device, cond.dtype)
            else:
                a = init.reshape(shape).to(cond.device, cond.dtype).clone()
            if known is not None:
                known = known.per_candidate(k)
                known = Known(known.values.to(cond.device, cond.dtype).clone(), known.mask.to(cond.device))
            tokens = self.obs_encoder(cond).repeat_interleave(k, dim=0).detach()
            a, v = self._project(known, a, torch.zeros_like(a))
            active = torch.ones(b * k, dtype=torch.bool, device=a.device)
            i = 0
            # per sample: stop once its gradient is small (never before the first step), then one final step;
            # a sample that stopped keeps its (a, v) bit for bit, so its result never depends on the others
            while i < steps - 1 and bool(active.any()):
                a_new, v_new, _, grad = self._step(a, v, tokens, i, steps, train=False)
                a_new, v_new = self._project(known, a_new.detach(), v_new.detach())
                keep = active[:, None, None]
                a, v = torch.where(keep, a_new, a), torch.where(keep, v_new, v)
                free = grad if known is None else torch.where(known.mask, torch.zeros_like(grad), grad)
                active &= free.flatten(1).norm(dim=1) > cfg.min_grad  # known tokens cannot move: not counted
                i += 1
            a, _, _, _ = self._step(a, v, tokens, i, steps, train=False)
            a, _ = self._project(known, a.detach(), v)
            with torch.no_grad():  # at the returned actions (not the look-ahead point), normalized as every
                energy = self.energy(self._normalize(a), tokens)  # trajectory the net sees
        a, energy = rearrange(a.detach(), "(b k) t a -> b k t a", k=k), rearrange(energy.detach(), "(b k) -> b k", k=k)
        return a, {"energy": energy, "scores": energy}


__all__ = ["EBTHead", "EBTHeadConfig"]
