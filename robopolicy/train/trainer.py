"""One training loop for every head: AdamW, warmup + cosine, EMA, checkpoints, exact resume.

Output folder: ``policy/`` (the EMA weights: what evaluation and serving load), ``last/`` (the
raw weights), ``train_state.pt`` (optimizer, LR schedule, EMA, step, RNG: loaded with
weights_only=True) and ``log.jsonl``. Batch order is a function of (seed, epoch), in RAM or streamed
by worker processes, so a resumed run replays exactly the batches the interrupted one would have seen.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from robopolicy.config import Config
from robopolicy.data.loaders import InMemoryWindows, StreamingWindows, WindowGather, worker_init
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.store import DemoStore
from robopolicy.data.windows import WindowSpec, split_episodes
from robopolicy.errors import ConfigError
from robopolicy.policy import Policy, obs_keys_of


class EMA:
    """Exponential moving average of weights with Diffusion Policy's schedule: the n-th update
    (from 0) uses decay 0 for n <= 1, then 1 - n^-power, capped at ``max_decay``: fast early, slow late."""

    def __init__(self, model: torch.nn.Module, power: float, max_decay: float):
        self.power, self.max_decay, self.step = power, max_decay, 0
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay(self, n: int) -> float:
        return 0.0 if n <= 1 else min(self.max_decay, 1 - n ** -self.power)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = self.decay(self.step)
        self.step += 1
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.weights[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                self.weights[k].copy_(v)


def param_groups(policy: Policy, cfg: Config) -> list[dict]:
    """Diffusion Policy's groups: the head's weight matrices decay, its biases, norms and position
    embeddings do not; the encoder has its own decay."""
    decay, no_decay = [], []
    for name, p in policy.head.named_parameters():
        (decay if p.ndim >= 2 and not name.endswith("_pos") else no_decay).append(p)
    return [{"params": decay, "weight_decay": cfg.train.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {"params": list(policy.encoder.parameters()), "weight_decay": cfg.train.optim.encoder_weight_decay}]


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))
    return f


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(cfg: Config, store_path: str | Path, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    out = Path(out)
    if out.exists() and not resume and any(out.iterdir()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    device = _device(cfg.train.device)

    with DemoStore.open(store_path) as store:
        schema = store.schema
        obs_keys = obs_keys_of(cfg, schema)
        low_dim = [k for k in obs_keys if not schema[k].is_image]
        stats_keys = low_dim + [cfg.data.action_key]
        # observations that barely move in the demos (a resting object's jitter) stay near 0 instead of
        # having their noise stretched over [-1, 1]
        normalizer = Normalizer.fit(store.load(stats_keys), {k: "minmax" for k in stats_keys},
                                    min_span={k: cfg.data.obs_min_span for k in low_dim})
        train_eps, _ = split_episodes(store.n_episodes, cfg.data.val_fraction, cfg.train.seed)
        spec = WindowSpec(cfg.data.n_obs, cfg.data.horizon, cfg.data.stride)
        gather = WindowGather(spec, obs_keys, cfg.data.action_key, normalizer)
        epoch_batches, n_windows = _batches(cfg, store, store_path, gather, train_eps)
    if n_windows < cfg.data.batch_size:
        raise ConfigError(f"{n_windows} training windows are fewer than one batch of {cfg.data.batch_size}")

    policy = Policy(cfg, schema, normalizer).to(device)
    optim = torch.optim.AdamW(param_groups(policy, cfg), lr=cfg.train.optim.lr, betas=tuple(cfg.train.optim.betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(cfg.train.optim.warmup_steps, cfg.train.steps))
    ema = EMA(policy, cfg.train.ema_power, cfg.train.ema_max)
    step, epoch, position = 0, 0, 0  # position: batches of this epoch already trained on
    if resume and (out / "train_state.pt").exists():
        state = torch.load(out / "train_state.pt", weights_only=True, map_location=device)
        policy.load_weights(state["model"], out / "train_state.pt")
        optim.load_state_dict(state["optim"])
        schedule.load_state_dict(state["schedule"])
        ema.weights, ema.step, step = state["ema"], state["ema_step"], state["step"]
        epoch, position = state["epoch"], state["position"]
        torch.set_rng_state(state["rng"])

    bar = tqdm(total=cfg.train.steps, initial=step, desc=f"train {cfg.name}", disable=not progress)
    log = (out / "log.jsonl").open("a")
    t_last, n_last = time.perf_counter(), step
    policy.train()
    while step < cfg.train.steps:
        for i, batch in enumerate(epoch_batches(epoch)):
            if i < position:  # a resumed run replays the interrupted epoch up to where it stopped
                continue
            batch = {"obs": {k: v.to(device) for k, v in batch["obs"].items()}, "action": batch["action"].to(device)}
            loss = policy.loss(batch)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.train.optim.grad_clip)
            optim.step()
            schedule.step()
            ema.update(policy)
            step, position = step + 1, i + 1
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                rate = (step - n_last) * cfg.data.batch_size / (time.perf_counter() - t_last)
                t_last, n_last = time.perf_counter(), step
                bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:.0f}")
                log.write(json.dumps({"step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0]}) + "\n")
                log.flush()
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                _checkpoint(out, policy, ema, optim, schedule, step, epoch, position)
            if step >= cfg.train.steps:
                break
        else:
            epoch, position = epoch + 1, 0
    bar.close()
    log.close()
    return out / "policy"


def _batches(cfg: Config, store: DemoStore, store_path, gather: WindowGather, episodes):
    """(epoch -> iterator of batches, number of windows). The order is a function of (seed, epoch)."""
    if cfg.data.num_workers == 0:
        data = InMemoryWindows(store, gather, episodes)
        return (lambda epoch: data.batches(cfg.data.batch_size, seed=(cfg.train.seed, epoch))), len(data)
    dataset = StreamingWindows(store_path, gather, cfg.data.batch_size, episodes=episodes, seed=cfg.train.seed)

    def epoch_batches(epoch: int):
        # fresh workers each epoch, their base seed drawn from a generator seeded by (seed, epoch)
        generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
        return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=cfg.data.num_workers,
                                                multiprocessing_context="forkserver", worker_init_fn=worker_init,
                                                generator=generator, prefetch_factor=4))
    return epoch_batches, dataset.n_windows


def _checkpoint(out: Path, policy: Policy, ema: EMA, optim, schedule, step: int, epoch: int, position: int) -> None:
    policy.save(out / "policy", weights=ema.weights)
    policy.save(out / "last")
    tmp = out / "train_state.pt.tmp"
    torch.save({"model": policy.state_dict(), "optim": optim.state_dict(), "schedule": schedule.state_dict(),
                "ema": ema.weights, "ema_step": ema.step, "step": step, "epoch": epoch, "position": position,
                "rng": torch.get_rng_state()}, tmp)
    tmp.replace(out / "train_state.pt")  # a crash mid-save leaves the previous state


__all__ = ["EMA", "train"]
