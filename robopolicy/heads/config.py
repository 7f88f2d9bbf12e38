"""The heads' configs: plain dataclasses (no torch), so that reading a config file imports no model code.
Each head's module (diffusion.py, ptp.py, ebt.py) builds from its section of ``policy``."""
from __future__ import annotations

from dataclasses import dataclass, field

from robopolicy.heads import Capabilities


@dataclass
class DiffusionHeadConfig:
    denoiser: str = "unet"  # "unet" (DP-C: flattened To-frame condition) or "transformer" (DP-T: a token per frame)
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128
    train_steps: int = 100
    sampler: str = "ddim"  # "ddim" or "ddpm" (all train_steps)
    inference_steps: int = 10
    n_layer: int = 8  # transformer
    n_head: int = 4
    n_emb: int = 256
    p_drop_attn: float = 0.3
    inpaint_guidance: float = 2.0  # known actions (real-time chunking): the weight w of ``_inpaint`` (0: replace)
    supervise_past: bool = False  # True: Past-Token Prediction (all H tokens); False: tokens To-1..H-1
    scheduler_kwargs: dict = field(default_factory=lambda: {"beta_schedule": "squaredcos_cap_v2",
                                                             "prediction_type": "epsilon", "clip_sample": True})

    def capabilities(self) -> Capabilities:
        return Capabilities()  # no score of its own, no predicted past: the verifier falls back on coherence


@dataclass
class PTPHeadConfig:
    past_action_pred: bool = True  # False: the no-PTP baseline (tokens To-1..H-1 only)
    past_steps_reg: int = -1  # -1: every past token supervised; K >= 0: only the K most recent
    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_attn: float = 0.3
    train_steps: int = 100
    sampler: str = "ddpm"  # the paper: DDPM with all 100 steps; "ddim" with inference_steps for CPU configs
    inference_steps: int = 100
    inpaint_guidance: float = 2.0  # known actions (real-time chunking): see DiffusionHead._inpaint
    scheduler_kwargs: dict = field(default_factory=lambda: {"beta_schedule": "squaredcos_cap_v2",
                                                             "prediction_type": "epsilon", "clip_sample": True})

    def first_supervised(self, n_obs: int) -> int:
        """The first chunk token the loss covers (algorithms.md §1.3)."""
        if not self.past_action_pred:
            return n_obs - 1
        if self.past_steps_reg < 0:
            return 0
        return max(n_obs - 1 - self.past_steps_reg, 0)

    def capabilities(self) -> Capabilities:
        # info["past"] is trained (not in the no-PTP baseline): verification may compare it
        return Capabilities(predicts_past=self.past_action_pred)


@dataclass
class EBTHeadConfig:
    n_layer: int = 8  # energy transformer blocks
    obs_layers: int = 8  # observation temporal encoder blocks
    n_head: int = 4
    n_emb: int = 256
    step_size: float = 1000.0  # alpha (clamped >= 1e-4)
    step_size_jitter: float = 1.5  # training: alpha_i ~ U[alpha / s, alpha * s] per sample
    energy_temperature: float = 1.0  # alpha_eff = alpha * exp(E) / T
    momentum: float = 0.9  # Nesterov mu
    train_steps: int = 6  # unrolled steps in training: train_steps + U{0..train_steps_extra}
    train_steps_extra: int = 4
    langevin_max: float = 0.2  # training noise, cosine-annealed from max to min over the unrolled steps
    langevin_min: float = 0.002
    inference_steps: int = 2  # the paper's "2 steps"
    min_grad: float = 1e-3  # early stop when more steps are allowed
    batch_rms_norm: bool = False  # True: the reference's whole-batch normalization (not batch-invariant)
    # training samples that start with their first 1..(H-To+1)/2 future tokens known (the committed queue of
    # real-time chunking, re-projected every step): 0 trains only the start from noise
    warm_start_frac: float = 0.0

    def capabilities(self) -> Capabilities:
        # info["scores"]: each candidate's final energy, what the verifier ranks by; sample(init=candidates,
        # steps=n) continues their minimization (Policy.act's refine_above)
        return Capabilities(self_scores=True, refines=True)
