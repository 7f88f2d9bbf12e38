"""Policy = normalizer + observation encoder + head. It acts on raw observation windows.

Checkpoint folder (no pickles): ``model.safetensors`` (weights and normalizer statistics),
``config.yaml`` (the full Config), ``schema.json`` (observation keys, shapes, dtypes, action size).
Loading is strict: a missing, unexpected or differently shaped tensor is one ConfigError naming it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robopolicy.config import Config, load_config
from robopolicy.data.embeddings import EMBEDDING_KEY
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.store import Field
from robopolicy.errors import ConfigError
from robopolicy.heads.diffusion import DiffusionHead
from robopolicy.heads.ebt import EBTHead
from robopolicy.heads.ptp import PTPHead
from robopolicy.models.encoders import ObsEncoder


@dataclass
class ActionChunk:
    actions: np.ndarray  # (Ta, Da) to execute, in the environment's action space
    t0: int  # the step the first action is for
    scores: np.ndarray | None = None  # per candidate, when the head scored several


def obs_keys_of(cfg: Config, schema: dict[str, Field]) -> list[str]:
    keys = cfg.data.obs_keys or [k for k, f in schema.items() if f.is_image] + ["state"]
    missing = [k for k in keys if k not in schema]
    if missing:
        raise ConfigError(f"config asks for observation keys {missing}; the store has {sorted(schema)}")
    return keys


PAST_ACT = "past_act"


def build_head(cfg: Config, action_dim: int, cond_dim: int) -> nn.Module:
    """The head ``cfg.policy.head`` names, built from its own config section (policy.diffusion, .ptp, .ebt)."""
    heads = {"diffusion": lambda: DiffusionHead(action_dim, cfg.data.horizon, cfg.data.n_obs, cond_dim,
                                                cfg.policy.diffusion),
             "ptp": lambda: PTPHead(action_dim, cfg.data.horizon, cfg.data.n_obs, cond_dim, cfg.policy.ptp),
             "ebt": lambda: EBTHead(action_dim, cfg.data.horizon, cfg.data.n_obs, cond_dim, cfg.policy.ebt)}
    if cfg.policy.head not in heads:
        raise ConfigError(f"unknown head {cfg.policy.head!r}; available: {', '.join(heads)}")
    return heads[cfg.policy.head]()


class Policy(nn.Module):
    def __init__(self, cfg: Config, schema: dict[str, Field], normalizer: Normalizer):
        super().__init__()
        self.cfg, self.schema, self.normalizer = cfg, dict(schema), normalizer
        self.obs_keys = obs_keys_of(cfg, schema)
        images = {k: schema[k].shape[0] for k in self.obs_keys if schema[k].is_image}
        low_dim = {k: int(np.prod(schema[k].shape)) for k in self.obs_keys if not schema[k].is_image}
        self.encoder = ObsEncoder(images, low_dim, cfg.policy.encoder)
        self.action_dim = int(np.prod(schema[cfg.data.action_key].shape))
        # executed past actions as an input (PTP's `past_act` ablation) join each frame's features
        cond_dim = self.encoder.out_dim + (self.action_dim if cfg.data.past_act else 0)
        self.head = build_head(cfg, self.action_dim, cond_dim)
        if cfg.policy.freeze_encoder:  # a stage-2 policy: the encoder that made its cached embeddings
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> Policy:
        super().train(mode)
        if self.cfg.policy.freeze_encoder:
            self.encoder.eval()  # frozen means eval mode too: center crop, as when the cache was written
        return self

    def condition(self, obs: dict) -> torch.Tensor:
        """(B, To, D) per-frame features: cached embeddings when the batch carries them (the encoder
        does not run), else the encoder's output."""
        features = obs[EMBEDDING_KEY] if EMBEDDING_KEY in obs else self.encoder(obs)
        if self.cfg.data.past_act:
            features = torch.cat([features, obs[PAST_ACT].to(features.dtype)], dim=-1)
        return features

    def forward(self, batch: dict) -> torch.Tensor:
        """The training loss of a batch from the loaders (already normalized): obs (B, To, ...),
        action (B, H, Da). ``forward`` so that DistributedDataParallel sees it."""
        return self.head.loss(self.condition(batch["obs"]), batch["action"])

    def loss(self, batch: dict) -> torch.Tensor:
        return self(batch)

    def normalized_obs(self, frames: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Raw observations of the encoder's keys -> normalized tensors on the policy's device, shapes kept."""
        device = next(self.parameters()).device
        out = {}
        for key in self.obs_keys:
            x = np.asarray(frames[key])
            if key in self.normalizer.scale:
                x = self.normalizer.normalize(key, x)
            out[key] = torch.as_tensor(np.ascontiguousarray(x), device=device)
        return out

    @torch.no_grad()
    def act(self, obs_window: dict[str, np.ndarray], executed_actions: np.ndarray | None = None, k: int = 1,
            generator: torch.Generator | None = None, t0: int = 0,
            past_actions: np.ndarray | None = None) -> ActionChunk:
        """``obs_window[key]``: (To, ...) raw observations, oldest first. ``executed_actions`` (To, Da): the
        action executed just before each of those frames (needed when ``data.past_act``). Returns the Ta
        actions from now, of the best of ``k`` candidates: the lowest score a head gives (EBT: final
        energy), or with ``past_actions`` (To-1, Da), the actions executed at the first To-1 frames'
        timestamps, and a head that predicts its past (PTP), the one whose predicted past is closest to
        them (MSE in normalized action space: self-verification, algorithms.md §1.5). Else the first."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        obs = {k: v[None] for k, v in self.normalized_obs(obs_window).items()}
        if self.cfg.data.past_act:
            if executed_actions is None or np.shape(executed_actions) != (self.cfg.data.n_obs, self.action_dim):
                raise ConfigError(f"this policy takes executed past actions as input: pass executed_actions of shape "
                                  f"({self.cfg.data.n_obs}, {self.action_dim}), got "
                                  f"{None if executed_actions is None else np.shape(executed_actions)}")
            past = self.normalizer.normalize(self.cfg.data.action_key, np.asarray(executed_actions, np.float32))
            obs[PAST_ACT] = torch.as_tensor(past, device=device)[None]
        executed = None if past_actions is None else self._executed_past(past_actions)  # checked before sampling
        candidates, info = self.head.sample(self.condition(obs), k=k, generator=generator)
        scores = info.get("scores")  # lower is better (EBT: final energy); without scores, the first candidate
        if executed is not None and "past" in info:  # self-verification: predicted past vs executed, normalized
            scores = ((info["past"] - executed.to(info["past"].dtype)) ** 2).mean(dim=(-1, -2))
        best = int(scores[0].argmin()) if scores is not None else 0
        chunk = self.normalizer.unnormalize(self.cfg.data.action_key, candidates[0, best].float().cpu().numpy())
        start = self.cfg.data.n_obs - 1
        self.train(was_training)
        return ActionChunk(chunk[start: start + self.cfg.data.n_action_steps], t0,
                           None if scores is None else scores[0].float().cpu().numpy())

    def _executed_past(self, past_actions: np.ndarray) -> torch.Tensor:
        """The executed past (To-1, Da), checked and normalized, on the policy's device."""
        want = (self.cfg.data.n_obs - 1, self.action_dim)
        if np.shape(past_actions) != want:
            raise ConfigError(f"past_actions must be the {want[0]} actions executed at the past frames' timestamps, "
                              f"shape {want}; got {np.shape(past_actions)}")
        executed = self.normalizer.normalize(self.cfg.data.action_key, np.asarray(past_actions, np.float32))
        return torch.as_tensor(executed, device=next(self.parameters()).device)

    # ------------------------------------------------------------ checkpoints
    def save(self, folder: str | Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        from omegaconf import OmegaConf
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in (weights or self.state_dict()).items()}
        tensors.update({f"normalizer.{k}": v for k, v in self.normalizer.state_dict().items()})
        save_file(tensors, folder / "model.safetensors")
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(self.cfg)))
        (folder / "schema.json").write_text(json.dumps({k: f.to_json() for k, f in self.schema.items()}, indent=1))

    @classmethod
    def load(cls, folder: str | Path, map_location: str = "cpu") -> Policy:
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in ("model.safetensors", "config.yaml", "schema.json"):
            if not (folder / name).is_file():
                raise ConfigError(f"{folder}: not a policy checkpoint (no {name}); pass the folder "
                                  "`robopolicy train` wrote")
        cfg = load_config(folder / "config.yaml")
        schema = {k: Field.from_json(v) for k, v in json.loads((folder / "schema.json").read_text()).items()}
        tensors = load_file(folder / "model.safetensors", device=map_location)
        norm = {k.removeprefix("normalizer."): v for k, v in tensors.items() if k.startswith("normalizer.")}
        policy = cls(cfg, schema, Normalizer.from_state_dict(norm))
        policy.load_weights({k: v for k, v in tensors.items() if not k.startswith("normalizer.")}, folder)
        return policy

    def load_weights(self, tensors: dict[str, torch.Tensor], source: str | Path = "weights") -> None:
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        shapes = [f"{k}: {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in tensors and tensors[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ConfigError(f"{source} does not fit this policy: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, shape mismatches {shapes[:5]} (saved vs built)")
        self.load_state_dict(tensors, strict=True)
