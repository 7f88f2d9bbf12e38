"""`robopolicy bench train`: what training on cached embeddings buys, and what a chunk costs to sample.

Two tables from one run, on one synthetic store (96x96 images + state), on this machine:

1. Training samples/s at a long context (To=16, H=32): end to end on images (the encoder runs forward
   and backward on every frame of every window) vs on cached embeddings (``robopolicy cache``: the
   head alone). Each step is a full step: batch gathered from RAM, moved to the device, loss,
   backward, AdamW. Median of 3 timed stretches.
2. Per head, on state with its shipped config (diffusion with DDIM-10 and with DDPM-100, PTP at
   To=16, EBT with 2 steps): training samples/s, and chunk latency at batch 1 for K=1 and K=8
   candidates in one call (encoder + sampling, median of repeated calls), with the ratios
   DDPM-100 / DDIM-10, DDPM-100 / EBT-2 and DDIM-10 / EBT-2, and the network evaluations per chunk
   (algorithms.md check 26: 2 energy passes, each with a backward, vs 10 or 100 denoiser passes).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from robopolicy.bench.data import synthetic_store
from robopolicy.config import load_config
from robopolicy.data.loaders import InMemoryWindows, WindowGather
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.store import DemoStore
from robopolicy.data.windows import WindowSpec
from robopolicy.device import choose as choose_device
from robopolicy.embeddings import EMBEDDING_KEY, write_cache
from robopolicy.policy import Policy

LONG = {"n_obs": 16, "horizon": 32}
HEAD_BATCH = 64
# (label, shipped state config, overrides) of each head timed: training samples/s and chunk latency
HEADS = [("DDIM-10", "diffusion", []), ("DDPM-100", "diffusion", ["policy.diffusion.sampler=ddpm"]),
         ("PTP", "ptp", []), ("EBT-2", "ebt", [])]


def _median_rate(step, seconds: float, per_step: int) -> float:
    """Samples/s: median of 3 stretches of ``seconds / 3`` (at least 2 steps each), after one warm-up step."""
    step()
    rates = []
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - t0 < seconds / 3:
            step()
            n += 1
        rates.append(n * per_step / (time.perf_counter() - t0))
    return statistics.median(rates)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _train_rate(policy: Policy, windows: InMemoryWindows, batch: int, device: torch.device, seconds: float,
                bf16: bool) -> float:
    policy.train()
    optim = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    rng = np.random.default_rng(0)

    def step():
        b = windows.batch(rng.choice(len(windows), batch, replace=False))
        b = {"obs": {k: v.to(device) for k, v in b["obs"].items()}, "action": b["action"].to(device)}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = policy.loss(b)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        _sync(device)
    return _median_rate(step, seconds, batch)


def _state_window(policy: Policy) -> dict[str, torch.Tensor]:
    """One random (normalized) state observation window, batch 1, on the policy's device."""
    device = next(policy.parameters()).device
    return {"state": torch.randn(1, policy.cfg.data.n_obs, *policy.schema["state"].shape, device=device)}


def _latency_ms(policy: Policy, k: int, device: torch.device, calls: int) -> float:
    """Encoder + sampling of K candidates for one observation window, ms, median of ``calls``."""
    policy.eval()
    obs = _state_window(policy)
    generator = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(calls + 2):
        t0 = time.perf_counter()
        with torch.no_grad():
            policy.head.sample(policy.encoder(obs), k=k, generators=generator)
        _sync(device)
        if i >= 2:  # two warm-up calls
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _net_calls(policy: Policy, k: int) -> str:
    """Network evaluations per chunk (check 26): the forward calls of the busiest submodule of the head in
    one ``sample``: the denoiser's steps; EBT's energy-gradient steps (the forwards with autograd on, each
    with a backward for dE/da) "+1" for the forward that scores the returned actions."""
    counts = {name: [0, 0] for name, _ in policy.head.named_children()}  # [autograd on, off]

    def count(name):
        def hook(*_):
            counts[name][0 if torch.is_grad_enabled() else 1] += 1
        return hook

    hooks = [m.register_forward_hook(count(name)) for name, m in policy.head.named_children()]
    try:
        with torch.no_grad():
            policy.head.sample(policy.encoder(_state_window(policy)), k=k)
    finally:
        for h in hooks:
            h.remove()
    grad, plain = max(counts.values())
    return f"{grad}+{plain}" if grad else str(plain)


def run_train_bench(config: str = "diffusion_image", batch: int = 32, seconds: float = 6.0, calls: int = 15,
                    device: str = "auto", quick: bool = False, overrides: tuple[str, ...] = ()) -> dict:
    dev = choose_device(device)
    bf16 = dev.type == "cuda"
    if quick:
        batch, seconds, calls = 4, 0.3, 2
    torch.manual_seed(0)
    results: dict = {"device": str(dev), "batch": batch, "bf16": bf16, "head_batch": 8 if quick else HEAD_BATCH}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        episodes, length = (2, 40) if quick else (8, 120)
        synthetic_store(tmp / "demos.zarr", episodes, length).close()
        overrides = [f"data.n_obs={LONG['n_obs']}", f"data.horizon={LONG['horizon']}", *overrides]
        cfg = load_config(config, overrides)
        with DemoStore.open(tmp / "demos.zarr") as store:
            keys, schema = ["state", "action"], store.schema
            normalizer = Normalizer.for_policy(store.load(keys), ["state"], "action", cfg.data.obs_min_span)
            policy = Policy(cfg, schema, normalizer).to(dev)
            spec = WindowSpec.of(cfg.data)
            images = InMemoryWindows(store, WindowGather(spec, policy.obs_keys, "action", normalizer))
            print(f"{config}: {policy.cfg.policy.encoder.trunk} encoder, To={spec.n_obs} H={spec.horizon}, "
                  f"batch {batch}, on {dev}{' (bf16 autocast)' if bf16 else ''}", flush=True)
            results["image"] = _train_rate(policy, images, batch, dev, seconds, bf16)
            print(f"  end to end on images: {results['image']:.1f} samples/s", flush=True)
        # the cache of this (untrained) encoder: the timing does not depend on what the encoder learned
        policy.cpu().save(tmp / "stage1")
        cache = write_cache(tmp / "stage1", tmp / "demos.zarr", tmp / "cache.zarr", device=str(dev), progress=False)
        with DemoStore.open(cache) as c:
            cached = Policy(replace(cfg, policy=replace(cfg.policy, freeze_encoder=True)), schema, normalizer)
            cached.load_state_dict(policy.state_dict())
            cached.to(dev)
            windows = InMemoryWindows(c, WindowGather(spec, [EMBEDDING_KEY], "action", normalizer))
            results["cached"] = _train_rate(cached, windows, batch, dev, seconds, bf16)
        print(f"  on cached embeddings: {results['cached']:.1f} samples/s", flush=True)

        results["heads"] = {}
        with DemoStore.open(tmp / "demos.zarr") as store:
            for label, name, head_overrides in HEADS:
                head_cfg = load_config(name, ["data.obs_keys=[state]", *head_overrides])
                torch.manual_seed(0)
                p = Policy(head_cfg, schema, normalizer).to(dev)
                spec = WindowSpec.of(head_cfg.data)
                windows = InMemoryWindows(store, WindowGather(spec, p.obs_keys, "action", normalizer))
                row = {"train": _train_rate(p, windows, results["head_batch"], dev, seconds / 2, bf16),
                       "latency": {k: _latency_ms(p, k, dev, calls) for k in (1, 8)}, "net_calls": _net_calls(p, 1)}
                results["heads"][label] = row
                print(f"  {label}: {row['train']:.0f} samples/s training; {row['latency'][1]:.1f} ms (K=1), "
                      f"{row['latency'][8]:.1f} ms (K=8)", flush=True)
    _print_tables(results, config)
    return results


def _print_tables(r: dict, config: str) -> None:
    print(f"\ntraining at To={LONG['n_obs']}, H={LONG['horizon']} ({config}, batch {r['batch']}, {r['device']}), "
          "samples/s, median of 3:")
    print(f"  end to end on images  {r['image']:>10.1f}")
    print(f"  on cached embeddings  {r['cached']:>10.1f}")
    print(f"  cached / images       {r['cached'] / r['image']:>10.1f}x")
    print(f"\nper head on state, shipped configs (DDIM-10 / DDPM-100: diffusion; PTP: ptp, To=16, DDIM-10; EBT-2: ebt, "
          f"2 steps): training samples/s at batch {r['head_batch']}; chunk latency at batch 1 (encoder + "
          "sampling), ms, median of calls")
    print(f"  {'head':<10} {'train samples/s':>16} {'K=1 ms':>8} {'K=8 ms':>8} {'K=8/K=1':>8} {'net calls':>10}")
    for label, row in r["heads"].items():
        lat = row["latency"]
        print(f"  {label:<10} {row['train']:>16.0f} {lat[1]:>8.1f} {lat[8]:>8.1f} {lat[8] / lat[1]:>7.1f}x "
              f"{row['net_calls']:>10}")
    print("  (net calls: network evaluations per chunk; EBT: 2 energy-gradient steps, each with a backward for "
          "dE/da, + 1 forward scoring the actions returned)")
    lat = {label: row["latency"] for label, row in r["heads"].items()}
    for slow, fast in (("DDPM-100", "DDIM-10"), ("DDPM-100", "EBT-2"), ("DDIM-10", "EBT-2")):
        if slow in lat and fast in lat:
            print(f"  {slow} / {fast}: {lat[slow][1] / lat[fast][1]:.1f}x (K=1), "
                  f"{lat[slow][8] / lat[fast][8]:.1f}x (K=8)")
