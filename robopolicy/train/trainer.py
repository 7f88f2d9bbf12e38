"""One training loop for every head: AdamW, warmup + cosine, EMA, checkpoints, exact resume.

Output folder: ``policy/`` (the EMA weights: what evaluation and serving load), ``last/`` (the
raw weights), ``train_state.pt`` (optimizer, LR schedule, EMA, step, RNG: loaded with
weights_only=True) and ``log.jsonl`` (loss; at checkpoints ``val_loss`` on the episodes
``data.val_fraction`` holds out, which are never trained on: every figure so far trained on 45 of 50 demos). Batch order
is a function of (seed, epoch), in RAM or streamed by worker processes, so a resumed run replays
exactly the batches the interrupted one would have seen.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from robopolicy.config import Config
from robopolicy.data.loaders import InMemoryWindows, StreamingWindows, WindowGather, worker_init
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.store import DemoStore
from robopolicy.data.windows import WindowSpec, split_episodes
from robopolicy.device import choose as choose_device
from robopolicy.embeddings import EMBEDDING_KEY, encoder_hash, open_for_training
from robopolicy.errors import ConfigError
from robopolicy.policy import Policy, obs_keys_of
from robopolicy.train.clocks import Budget, Meter


class EMA:
    """Exponential moving average of weights with Diffusion Policy's schedule: the n-th update
    (from 0) uses decay 0 for n <= 1, then 1 - n^-power, capped at ``max_decay``: fast early, slow late."""

    def __init__(self, model: torch.nn.Module, power: float, max_decay: float):
        self.power, self.max_decay, self.step = power, max_decay, 0
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # frozen weights (a cached encoder) are copied, not averaged: averaging would round them
        self.frozen = {k for k, p in model.named_parameters() if not p.requires_grad}

    def decay(self, n: int) -> float:
        return 0.0 if n <= 1 else min(self.max_decay, 1 - n ** -self.power)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = self.decay(self.step)
        self.step += 1
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point and k not in self.frozen:
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


@dataclass
class _Data:
    """What a run trains on: a demo store, or an embedding cache with the stage-1 policy that made it."""

    cfg: Config
    schema: dict
    normalizer: Normalizer
    epoch_batches: object  # (epoch, shard) -> iterator of batches
    n_windows: int
    encoder_weights: dict | None = None  # the frozen stage-1 encoder, when training on a cache
    encoder_hash: str | None = None
    task: dict | None = None  # envs.task_card of the training store: the checkpoint carries it
    val: InMemoryWindows | None = None  # the held-out episodes' windows (data.val_fraction), for the val loss


def _data(cfg: Config, store_path, embeddings) -> _Data:
    spec = WindowSpec.of(cfg.data)
    if embeddings is None:
        if store_path is None:
            raise ConfigError("nothing to train on: pass --store (a demo store) or --embeddings (a cache)")
        with DemoStore.open(store_path) as store:
            schema = store.schema
            obs_keys = obs_keys_of(cfg, schema)
            low_dim = [k for k in obs_keys if not schema[k].is_image]
            normalizer = Normalizer.for_policy(store.load([*low_dim, cfg.data.action_key]), low_dim,
                                               cfg.data.action_key, cfg.data.obs_min_span)
            train_eps, val_eps = split_episodes(store.n_episodes, cfg.data.val_fraction, cfg.train.seed)
            gather = WindowGather(spec, obs_keys, cfg.data.action_key, normalizer)
            from robopolicy.envs import task_card

            return _Data(cfg, schema, normalizer, *_batches(cfg, store, store_path, gather, train_eps),
                         task=task_card(store.env_spec, store.fps), val=_held_out(store, gather, val_eps))

    cache, info, stage1 = open_for_training(embeddings, store_path)
    with cache:
        # the policy keeps the stage-1 encoder (frozen) and its observation keys, so it acts on raw observations
        cfg = replace(cfg, data=replace(cfg.data, obs_keys=list(stage1.obs_keys), action_key=info.action_key),
                      policy=replace(cfg.policy, encoder=stage1.cfg.policy.encoder, freeze_encoder=True))
        actions = Normalizer.for_policy(cache.load([info.action_key]), [], info.action_key, cfg.data.obs_min_span)
        keep = [k for k in stage1.obs_keys if k in stage1.normalizer.scale]
        normalizer = Normalizer({**{k: stage1.normalizer.scale[k] for k in keep}, **actions.scale},
                                {**{k: stage1.normalizer.offset[k] for k in keep}, **actions.offset})
        train_eps, val_eps = split_episodes(cache.n_episodes, cfg.data.val_fraction, cfg.train.seed)
        gather = WindowGather(spec, [EMBEDDING_KEY], info.action_key, normalizer)  # reads embeddings only
        batches = _batches(cfg, cache, cache.path, gather, train_eps)
        val = _held_out(cache, gather, val_eps)
    return _Data(cfg, stage1.schema, normalizer, *batches, stage1.encoder.state_dict(), info.encoder_hash,
                 stage1.task, val)


VAL_WINDOWS = 256  # held-out windows the validation loss averages over (a fixed, evenly spread subset)


def _held_out(store: DemoStore, gather: WindowGather, episodes) -> InMemoryWindows | None:
    return InMemoryWindows(store, gather, episodes) if len(episodes) else None


@torch.no_grad()
def validation_loss(policy: Policy, val: InMemoryWindows, device: torch.device, batch_size: int, bf16: bool
                    ) -> float:
    """The training loss on held-out episodes, in eval mode, with the same noise every time (a fork of the
    RNG, so training's own draws are untouched): comparable across steps and runs."""
    rows = np.unique(np.linspace(0, len(val) - 1, min(VAL_WINDOWS, len(val))).astype(np.int64))
    was_training = policy.training
    policy.eval()
    total = 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for i in range(0, len(rows), batch_size):
            batch = val.batch(rows[i: i + batch_size])
            batch = {"obs": {k: v.to(device) for k, v in batch["obs"].items()}, "action": batch["action"].to(device)}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                total += policy.loss(batch).item() * len(batch["action"])
    policy.train(was_training)
    return total / len(rows)


class Rollouts(Protocol):
    """Rollouts during training (``eval.every``), e.g. robopolicy.eval.training.PeriodicRollouts: the trainer
    knows nothing of evaluation but this."""

    def start(self, policy: Policy) -> None:
        """Check what will be rolled out (a typo in eval.suite fails now, not hours in)."""

    def __call__(self, policy_dir: Path, out: Path) -> dict[str, float]:
        """Roll out the checkpoint in ``policy_dir``, records in ``out``; success per task."""


def train(cfg: Config, store_path: str | Path | None, out: str | Path, resume: bool = False, progress: bool = True,
          embeddings: str | Path | None = None, rollouts: Rollouts | None = None) -> Path:
    """Train ``cfg`` on a demo store, or on an embedding cache (``embeddings``). Under ``torchrun`` every
    process trains on its share of each batch order (DDP: gloo on CPU, NCCL on GPU); rank 0 writes.
    ``rollouts``: what ``eval.every`` runs on the EMA weights at those steps (required when it is set)."""
    out = Path(out)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if out.exists() and not resume and any(out.iterdir()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    device = choose_device(cfg.train.device)
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(cfg, store_path, out, resume, progress, embeddings, device, rank, world, rollouts)
    finally:
        if owns_group:  # a group left to the interpreter's exit kills gloo's threads mid-flight (SIGABRT)
            dist.destroy_process_group()


def _train(cfg: Config, store_path, out: Path, resume: bool, progress: bool, embeddings, device: torch.device,
           rank: int, world: int, rollouts: Rollouts | None) -> Path:
    torch.manual_seed(cfg.train.seed)  # the same initial weights in every process
    data = _data(cfg, store_path, embeddings)
    cfg = data.cfg
    if data.n_windows < cfg.data.batch_size * world:
        raise ConfigError(f"{data.n_windows} training windows are fewer than one batch of {cfg.data.batch_size}"
                          + (f" per process for {world} processes" if world > 1 else ""))
    if cfg.train.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {cfg.train.precision!r}")
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")

    policy = Policy(cfg, data.schema, data.normalizer).to(device)
    policy.task = data.task
    if cfg.eval.every > 0:
        if rollouts is None:
            raise ConfigError("eval.every is set but nothing to roll out: pass rollouts="
                              "robopolicy.eval.training.PeriodicRollouts(cfg), as `robopolicy train` does")
        rollouts.start(policy)  # a typo in eval.suite fails now, not hours in
    if data.encoder_weights is not None:
        policy.encoder.load_state_dict(data.encoder_weights)
        assert encoder_hash(policy) == data.encoder_hash, "the frozen encoder differs from the cache's"
    model = policy
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(policy, device_ids=[device] if device.type == "cuda"
                                                          else None)
    if cfg.train.compile:
        model = torch.compile(model)
    optim = torch.optim.AdamW(param_groups(policy, cfg), lr=cfg.train.optim.lr, betas=tuple(cfg.train.optim.betas))
    budget = Budget(cfg.train.minutes, cfg.train.steps)
    base = lr_lambda(cfg.train.optim.warmup_steps, cfg.train.steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: base(budget.schedule_step(s)))
    ema = EMA(policy, cfg.train.ema_power, cfg.train.ema_max)
    step, epoch, position = 0, 0, 0  # position: batches of this epoch already trained on
    torch.manual_seed(cfg.train.seed + rank)  # independent noise draws per process
    if resume and (out / "train_state.pt").exists():
        state = torch.load(out / "train_state.pt", weights_only=True, map_location=device)
        policy.load_weights(state["model"], out / "train_state.pt")
        optim.load_state_dict(state["optim"])
        schedule.load_state_dict(state["schedule"])
        ema.weights, ema.step, step = state["ema"], state["ema_step"], state["step"]
        epoch, position = state["epoch"], state["position"]
        budget.spent = state.get("wall_s", 0.0)
        _set_rng(state["rng"][rank % len(state["rng"])])

    writer = rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=cfg.train.steps, initial=step, desc=f"train {cfg.name}", disable=not (progress and writer))
    log = (out / "log.jsonl").open("a") if writer else None
    tb = _tensorboard(out) if writer and cfg.train.tensorboard else None
    meter = Meter(step)
    policy.train()
    while step < cfg.train.steps:
        for i, batch in enumerate(meter.timed(data.epoch_batches(epoch, (rank, world)))):
            if i < position:  # a resumed run replays the interrupted epoch up to where it stopped
                continue
            batch = {"obs": {k: v.to(device, non_blocking=True) for k, v in batch["obs"].items()},
                     "action": batch["action"].to(device, non_blocking=True)}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(batch)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.train.optim.grad_clip)
            optim.step()
            schedule.step()
            ema.update(policy)
            step, position = step + 1, i + 1
            bar.update(1)
            if writer and (step % cfg.train.log_every == 0 or step == cfg.train.steps):
                rate, wait = meter.read(step, cfg.data.batch_size * world)
                row = {"step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0], "samples_s": rate,
                       "data_wait": wait}
                bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{rate:.0f}", data_wait=f"{wait:.0%}")
                log.write(json.dumps(row) + "\n")
                log.flush()
                if tb is not None:
                    for key in ("loss", "lr", "samples_s", "data_wait"):
                        tb.add_scalar(f"train/{key}", row[key], step)
            evaluate_now = cfg.eval.every > 0 and step % cfg.eval.every == 0
            out_of_time = budget.over()
            if world > 1:  # every process stops at the same step
                flag = torch.tensor([float(out_of_time)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            if out_of_time and writer:
                log.write(json.dumps({"step": step, "stopped": "time budget", "wall_s": budget.elapsed()}) + "\n")
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or evaluate_now or out_of_time:
                _checkpoint(out, policy, ema, optim, schedule, step, epoch, position, world, writer,
                            budget.elapsed())
                if writer and data.val is not None:  # the held-out episodes: logged at checkpoints, never trained on
                    val = validation_loss(policy, data.val, device, cfg.data.batch_size, bf16)
                    log.write(json.dumps({"step": step, "val_loss": val}) + "\n")
                    log.flush()
                    if tb is not None:
                        tb.add_scalar("val/loss", val, step)
                    meter.t = time.perf_counter()  # its time is not training time
            if evaluate_now and writer:
                # a fork of the RNG: loading the policy draws from it, and a resumed run must draw as this one
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    rates = rollouts(out / "policy", out / "evals" / f"step-{step}")
                log.write(json.dumps({"step": step, "eval_success": rates}) + "\n")
                log.flush()
                for task, rate in rates.items():
                    if tb is not None:
                        tb.add_scalar(f"eval/{task}/success", rate, step)
                bar.write(f"step {step}: eval success " + ", ".join(f"{t} {r:.2f}" for t, r in rates.items()))
                meter.t = time.perf_counter()
            if step >= cfg.train.steps or out_of_time:
                break
        else:
            epoch, position = epoch + 1, 0
            continue
        if out_of_time:
            break
    bar.close()
    if writer:
        log.close()
        if tb is not None:
            tb.close()
    if world > 1:
        _check_replicas_agree(policy)
    return out / "policy"


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"))


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the loss's noise is drawn on the device
    return state


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def _check_replicas_agree(policy: Policy) -> None:
    """DDP keeps every process's weights equal; a difference means a broken setup, so say so."""
    flat = torch.cat([p.detach().float().flatten() for p in policy.parameters()])
    totals = [None] * dist.get_world_size()
    dist.all_gather_object(totals, flat.double().sum().item())
    if len(set(totals)) > 1:
        raise RuntimeError(f"DDP processes ended with different weights (sums {totals})")


def _batches(cfg: Config, store: DemoStore, store_path, gather: WindowGather, episodes):
    """(epoch, (rank, world) -> iterator of batches, number of windows). The order is a function of
    (seed, epoch); each process of a DDP run takes the same number of batches from it."""
    if cfg.data.num_workers == 0:
        data = InMemoryWindows(store, gather, episodes)
        return (lambda epoch, shard: data.batches(cfg.data.batch_size, seed=(cfg.train.seed, epoch), shard=shard)), \
            len(data)
    dataset = StreamingWindows(store_path, gather, cfg.data.batch_size, episodes=episodes, seed=cfg.train.seed)
    # each worker drops its last partial batch: this many batches come whatever the split between workers
    sure = max(len(dataset) - cfg.data.num_workers, 0)

    def epoch_batches(epoch: int, shard: tuple[int, int]):
        # fresh workers each epoch, their base seed drawn from a generator seeded by (seed, epoch)
        generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
        batches = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=cfg.data.num_workers,
                                                   multiprocessing_context="forkserver", worker_init_fn=worker_init,
                                                   generator=generator, prefetch_factor=4))
        rank, world = shard
        # DDP on streamed data: every process reads the epoch and keeps its share (simple; costs disk reads)
        return batches if world == 1 else itertools.islice(batches, rank, sure - sure % world, world)
    return epoch_batches, dataset.n_windows


def _checkpoint(out: Path, policy: Policy, ema: EMA, optim, schedule, step: int, epoch: int, position: int,
                world: int = 1, writer: bool = True, wall_s: float = 0.0) -> None:
    rngs = [_rng_state()]
    if world > 1:  # every process's RNG, so a resumed DDP run draws the same noise
        rngs = [None] * world
        dist.all_gather_object(rngs, _rng_state())
    if not writer:
        return
    policy.save(out / "policy", weights=ema.weights)
    policy.save(out / "last")
    tmp = out / "train_state.pt.tmp"
    torch.save({"model": policy.state_dict(), "optim": optim.state_dict(), "schedule": schedule.state_dict(),
                "ema": ema.weights, "ema_step": ema.step, "step": step, "epoch": epoch, "position": position,
                "rng": rngs, "wall_s": wall_s}, tmp)
    tmp.replace(out / "train_state.pt")  # a crash mid-save leaves the previous state


__all__ = ["EMA", "train"]
