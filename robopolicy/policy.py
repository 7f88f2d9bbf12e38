"""Policy = normalizer + observation encoder + head. It acts on raw observation windows.

Checkpoint folder (no pickles): ``model.safetensors`` (weights and normalizer statistics),
``config.yaml`` (the full Config), ``schema.json`` (observation keys, shapes, dtypes, action size) and
``task.json`` (where it was trained: the store's env spec, control rate, action semantics).
Loading is strict: a missing, unexpected or differently shaped tensor is one ConfigError naming it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robopolicy import heads, verify
from robopolicy.acting import Acting
from robopolicy.config import Config, load_config
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.store import Field
from robopolicy.data.windows import History, Window, WindowSpec
from robopolicy.errors import ConfigError
from robopolicy.heads.sampling import Known
from robopolicy.models.encoders import ObsEncoder

ACT_BATCH = 8  # windows per network call when acting (padded): fixed, and a multiple of 8 rows (the CPU kernels
# vectorize over 8 rows and compute a ragged last block differently), so a row never depends on its batch


@dataclass
class ActionChunk:
    actions: np.ndarray  # (Ta, Da) to execute, in the environment's action space
    t: int  # the step the first action is due at
    plan: np.ndarray  # (H-To+1, Da): the whole predicted future from step t (the first Ta are ``actions``)
    scores: np.ndarray | None = None  # (K,) the verifier's score of each candidate, lower is better
    method: str | None = None  # what scored them: "score" (the head's own: EBT energy), "past", "coherence"
    chosen: int = 0  # the candidate executed
    retried: int = 0  # draws beyond the first (``retry_above``: the best score was above the threshold)
    refined: bool = False  # given more optimization steps (``refine_above``: its score was above the threshold)


def obs_keys_of(cfg: Config, schema: dict[str, Field]) -> list[str]:
    keys = cfg.data.obs_keys or [k for k, f in schema.items() if f.is_image] + ["state"]
    missing = [k for k in keys if k not in schema]
    if missing:
        raise ConfigError(f"config asks for observation keys {missing}; the store has {sorted(schema)}")
    return keys


PAST_ACT = "past_act"
EMBEDDING_KEY = "embedding"  # a batch's cached per-frame features (embeddings.py): the encoder does not run


def build_head(cfg: Config, action_dim: int, cond_dim: int) -> heads.Head:
    """The head ``cfg.policy.head`` names, built from its own config section (policy.diffusion, .ptp, .ebt)."""
    section = getattr(cfg.policy, cfg.policy.head, None)
    return heads.build(cfg.policy.head, section, action_dim, cfg.data.horizon, cfg.data.n_obs, cond_dim)


class Policy(nn.Module):
    def __init__(self, cfg: Config, schema: dict[str, Field], normalizer: Normalizer):
        super().__init__()
        self.cfg, self.schema, self.normalizer = cfg, dict(schema), normalizer
        # where it was trained (envs.task_card): env spec, control rate, action semantics; None: unknown
        self.task: dict | None = None
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

    @property
    def observations(self) -> str:
        """"image" when it reads a camera, else "state": what an env must render for it."""
        return "image" if any(self.schema[k].is_image for k in self.obs_keys) else "state"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def history(self) -> History:
        """An empty episode history with this policy's window geometry (the one it was trained with)."""
        return History(WindowSpec.of(self.cfg.data), self.action_dim)

    @torch.no_grad()
    def act(self, windows: Sequence[Window], acting: Acting = Acting(),
            generators: Sequence[torch.Generator] | None = None, act_batch: int = ACT_BATCH) -> list[ActionChunk]:
        """The next Ta actions for each window (``History.window()``): a batch of rows, each with its own
        generator, each getting exactly what it would get alone (bit for bit): the networks always run on
        ``act_batch`` rows (padded), since CPU kernels change their arithmetic with the batch size.

        Per row, ``verify.method`` says whether there is evidence to choose among ``acting.k`` candidates (the
        head's scores, the predicted past against ``actions_at_past_frames``, or coherence with ``queued``);
        with it the best of k is executed, without it one candidate is sampled. A window with ``committed`` > 0
        (real-time chunking) gets a chunk that starts with its first ``committed`` queued actions exactly (the
        heads' known actions), the rest generated to follow on from them.

        ``acting`` (robopolicy/acting.py; the server and evaluation pass theirs through unchanged):
        ``retry_above``: a row whose best candidate scores above it (EBT: its energy) draws K new candidates, up
        to ``retries`` times, continuing its own generator, and executes the best candidate of all draws.
        ``refine_above``: for heads that refine (``capabilities.refines``; EBT), a row whose best candidate
        scores above it has all its candidates optimized ``refine_steps`` steps more, from where they stand,
        before the verifier picks; confident rows cost nothing extra. Applied before ``retry_above``.
        ``inpaint_past`` (an experiment): the chunk's past tokens 0..To-2 are known actions, the ones executed
        at the past frames (``actions_at_past_frames``), so the future is denoised around the true past, as in
        training, where the future tokens attended to noised true past actions (the no-PTP mechanism question
        of the results issue)."""
        if self.training:
            raise ConfigError("Policy.act needs eval mode (policy.eval()): training mode random-crops and "
                              "drops out")
        windows = list(windows)
        generators = [None] * len(windows) if generators is None else list(generators)
        if len(generators) != len(windows):
            raise ConfigError(f"{len(generators)} generators for {len(windows)} windows: pass one per window")
        for w in windows:
            self.check_window(w)
        evidence = [self._evidence(w) for w in windows]
        how = [verify.method(self.head.capabilities, e) for e in evidence]
        chunks: list[ActionChunk | None] = [None] * len(windows)
        k = acting.k
        for kk in sorted({k if h else 1 for h in how}):
            rows = [i for i, h in enumerate(how) if (k if h else 1) == kk]
            for lo in range(0, len(rows), act_batch):
                part = rows[lo: lo + act_batch]
                padded = part + [part[-1]] * (act_batch - len(part))  # padding rows draw from spare generators
                gens = [generators[i] for i in part] + [torch.Generator().manual_seed(0)
                                                        for _ in range(act_batch - len(part))]
                known = self._known([windows[i] for i in padded], acting.inpaint_past)
                extra = {"known": known} if known else {}
                cond = self.condition(self._obs_batch([windows[i] for i in padded]))
                candidates, info = self.head.sample(cond, k=kk, generators=gens, **extra)
                refined = torch.zeros(len(padded), dtype=torch.bool)
                if acting.refine_above is not None and self.head.capabilities.refines:
                    refined = info["scores"].amin(dim=1).cpu() > acting.refine_above
                    if refined[: len(part)].any():  # every padded row runs (batch invariance), unsure ones keep it
                        more, more_info = self.head.sample(cond, k=kk, generators=gens, init=candidates,
                                                           steps=acting.refine_steps, **extra)
                        pick = refined.to(candidates.device)
                        candidates = torch.where(pick[:, None, None, None], more, candidates)
                        info = {key: torch.where(pick[:, None], more_info[key], value)
                                for key, value in info.items()}
                for j, i in enumerate(part):
                    chunks[i] = self._chunk(windows[i], candidates, info, j, evidence[i], how[i])
                    chunks[i].refined = bool(refined[j])
        if acting.retry_above is not None and acting.retries > 0:
            unsure = [i for i, c in enumerate(chunks) if c.scores is not None and c.scores.min() > acting.retry_above]
            if unsure:
                again = self.act([windows[i] for i in unsure], replace(acting, retries=acting.retries - 1),
                                 [generators[i] for i in unsure], act_batch)
                for i, c in zip(unsure, again):
                    first = chunks[i]
                    if c.scores.min() < first.scores.min():
                        chunks[i] = ActionChunk(c.actions, c.t, c.plan, c.scores, c.method, c.chosen, c.retried + 1,
                                                first.refined or c.refined)
                    else:
                        first.retried = c.retried + 1
        return chunks

    def _chunk(self, window: Window, candidates: torch.Tensor, info: dict, row: int, evidence: verify.Evidence,
               how: str | None) -> ActionChunk:
        scores = verify.scores(how, candidates, info, row, evidence, self.cfg.data.n_obs)
        best = int(scores.argmin()) if scores is not None else 0
        plan = self.normalizer.unnormalize(self.cfg.data.action_key,
                                           candidates[row, best, self.cfg.data.n_obs - 1:].float().cpu().numpy())
        if window.committed:  # the committed queue as it was sent, not through the normalizer's round trip
            n = min(window.committed, len(plan))
            plan[:n] = np.asarray(window.queued[:n], plan.dtype)
        return ActionChunk(plan[: self.cfg.data.n_action_steps], window.t, plan,
                           None if scores is None else scores.float().cpu().numpy(), how, best)

    def check_window(self, w: Window) -> None:
        """ConfigError naming what is wrong with a window this policy cannot act on (keys, shapes, dtypes,
        non-finite values); a server checks each request with it before batching it with others."""
        To = self.cfg.data.n_obs
        for key in self.obs_keys:
            if key not in w.obs:
                raise ConfigError(f"the observation lacks {key!r} (has {sorted(w.obs)}); this policy reads "
                                  f"{self.obs_keys}")
            x, field = w.obs[key], self.schema[key]
            want = (To, *field.shape)
            if np.shape(x) != want:
                raise ConfigError(f"observation {key!r}: window shape {np.shape(x)}, this policy takes {want} "
                                  f"(To={To} frames of {field.shape})")
            kind = np.asarray(x).dtype.kind
            if field.is_image and np.asarray(x).dtype != np.uint8:
                raise ConfigError(f"observation {key!r}: images are uint8 HWC, got {np.asarray(x).dtype}")
            if kind not in "biuf":
                raise ConfigError(f"observation {key!r}: dtype {np.asarray(x).dtype} is not a number")
            if kind == "f" and not np.isfinite(x).all():
                raise ConfigError(f"observation {key!r} holds NaN or inf")
        rows = {"actions_before_frames": To, "actions_at_past_frames": To - 1, "queued": None}
        for name, n in rows.items():
            a = getattr(w, name)
            if a is None:
                continue
            a = np.asarray(a)
            if a.ndim != 2 or a.shape[1] != self.action_dim or (n is not None and len(a) != n):
                raise ConfigError(f"{name} must be ({n if n is not None else 'L'}, {self.action_dim}), got "
                                  f"{a.shape}")
            if a.dtype.kind not in "fiu" or (name != "actions_before_frames" and not np.isfinite(a).all()):
                raise ConfigError(f"{name} must hold finite numbers")  # NaN rows before frames: none executed
        if not isinstance(w.committed, int) or isinstance(w.committed, bool) or w.committed < 0 or \
                w.committed > (0 if w.queued is None else len(w.queued)):
            raise ConfigError(f"committed must be an integer in [0, len(queued)] (the queued actions the chunk must "
                              f"keep), got {w.committed!r} with {0 if w.queued is None else len(w.queued)} queued")
        if self.cfg.data.past_act and w.actions_before_frames is None:
            raise ConfigError("this policy takes the actions executed before each frame as input: build "
                              f"windows with History, or pass actions_before_frames ({To}, {self.action_dim})")

    @torch.no_grad()
    def frame_features(self, frames: dict[str, np.ndarray]) -> torch.Tensor:
        """(N, D) the encoder's features of N raw frames (``frames[key]`` (N, ...)), in fixed blocks of
        ``ACT_BATCH`` frames (padded), so a frame's vector never depends on the frames beside it."""
        n, out = len(next(iter(frames.values()))), []
        for lo in range(0, n, ACT_BATCH):
            block = {k: x[lo: lo + ACT_BATCH] for k, x in frames.items()}
            pad = ACT_BATCH - len(next(iter(block.values())))
            block = {k: np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for k, x in block.items()}
            out.append(self.encoder(self.normalized_obs({k: x[None] for k, x in block.items()}))[0, : ACT_BATCH - pad])
        return torch.cat(out)

    def _obs_batch(self, windows: list[Window]) -> dict[str, torch.Tensor]:
        """Checked windows -> the normalized (B, To, ...) batch the encoder and head take (as the loaders do);
        windows that all carry their frames' ``features`` (a server's frame cache) skip the encoder."""
        if all(w.features is not None for w in windows):
            obs = {EMBEDDING_KEY: torch.stack([torch.as_tensor(w.features) for w in windows]).to(self.device)}
        else:
            obs = self.normalized_obs({k: np.stack([w.obs[k] for w in windows]) for k in self.obs_keys})
        if self.cfg.data.past_act:
            before = np.stack([w.actions_before_frames for w in windows]).astype(np.float32)
            before = self.normalizer.normalize(self.cfg.data.action_key, before)
            before[np.isnan(before)] = 0.0  # no action executed yet: the neutral one, as in training
            obs[PAST_ACT] = torch.as_tensor(before, device=self.device)
        return obs

    def _known(self, windows: list[Window], inpaint_past: bool = False) -> Known | None:
        """The committed queued actions of each row as known chunk tokens To-1+j, j < committed (and with
        ``inpaint_past`` the executed past at tokens 0..To-2); None when no row has any (the heads' plain
        path). Normalized, so every head sees them as it sees its targets."""
        To, H = self.cfg.data.n_obs, self.cfg.data.horizon
        past = [inpaint_past and w.actions_at_past_frames is not None and To > 1 for w in windows]
        if not any(w.committed for w in windows) and not any(past):
            return None
        values = np.zeros((len(windows), H, self.action_dim), np.float32)
        mask = np.zeros((len(windows), H), bool)
        for r, w in enumerate(windows):
            n = min(w.committed, H - To + 1)
            if n:
                values[r, To - 1: To - 1 + n] = self.normalizer.normalize(self.cfg.data.action_key,
                                                                          np.asarray(w.queued[:n], np.float32))
                mask[r, To - 1: To - 1 + n] = True
            if past[r]:
                values[r, : To - 1] = self.normalizer.normalize(self.cfg.data.action_key,
                                                                np.asarray(w.actions_at_past_frames, np.float32))
                mask[r, : To - 1] = True
        return Known(torch.as_tensor(values, device=self.device), torch.as_tensor(mask, device=self.device))

    def _evidence(self, window: Window) -> verify.Evidence:
        """A window's executed past and queued actions, checked and normalized."""
        def normalized(actions, name, rows=None):
            if actions is None:
                return None
            actions = np.asarray(actions, np.float32)
            if actions.ndim != 2 or actions.shape[1] != self.action_dim or (rows is not None and len(actions) != rows):
                raise ConfigError(f"{name} must be ({rows if rows is not None else 'L'}, {self.action_dim}), got "
                                  f"{actions.shape}")
            return torch.as_tensor(self.normalizer.normalize(self.cfg.data.action_key, actions), device=self.device)
        return verify.Evidence(normalized(window.actions_at_past_frames, "actions_at_past_frames",
                                          self.cfg.data.n_obs - 1), normalized(window.queued, "queued"))

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
        if self.task is not None:
            (folder / "task.json").write_text(json.dumps(self.task, indent=1))

    @classmethod
    def load(cls, folder: str | Path, map_location: str = "cpu") -> Policy:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not folder.exists():
            raise ConfigError(f"{folder}: does not exist; pass the folder `robopolicy train` wrote (RUN/policy)")
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
        if (folder / "task.json").is_file():
            policy.task = json.loads((folder / "task.json").read_text())
        return policy.eval()

    def load_weights(self, tensors: dict[str, torch.Tensor], source: str | Path = "weights") -> None:
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        shapes = [f"{k}: {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in tensors and tensors[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ConfigError(f"{source} does not fit this policy: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, shape mismatches {shapes[:5]} (saved vs built)")
        self.load_state_dict(tensors, strict=True)
