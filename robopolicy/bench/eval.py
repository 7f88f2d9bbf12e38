"""`robopolicy bench eval`: evaluation episodes/min with W env workers against 1, on one code path.

Every setting runs the same episodes (the same seeds) through ``run_episodes`` with ``WorkerEnv`` slots
and the policy's batched ``act``, exactly as ``robopolicy eval`` does, with the same torch thread
settings; only the number of workers changes. It prints episodes/min, the ratio to 1 worker, that
ratio per worker (the target: >= 0.8 up to the cores), where the time goes (physics and rendering in
the workers, summed over them; inference in this process) and whether every episode's result was the
same in every setting.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

SMALL = ["policy.diffusion.down_dims=[32,64,128]", "data.batch_size=32", "train.log_every=100",
         "train.tensorboard=false"]


def _policy(out: Path, quick: bool):
    """A small diffusion policy trained on 20 reach demos (through the pipeline: reused when ``out`` holds it)."""
    from robopolicy import pipeline
    from robopolicy.config import load_config
    from robopolicy.policy import Policy

    store = pipeline.demos("reach", 4 if quick else 20, out / "reach.zarr", progress=False)
    cfg = load_config("diffusion", SMALL + [f"train.steps={10 if quick else 200}", "train.optim.warmup_steps=5"])
    return Policy.load(pipeline.trained(cfg, out / "policy-run", store, progress=not quick))


def run_eval_bench(checkpoint: str | None = None, task: str = "reach", episodes: int = 8, workers: int = 2,
                   quick: bool = False, out: str | Path | None = None) -> dict:
    from robopolicy import envs
    from robopolicy.eval.rollout import run_episodes
    from robopolicy.eval.runner import env_spec_for
    from robopolicy.eval.workers import WorkerEnv
    from robopolicy.policy import Policy

    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="robopolicy-bench-eval-"))
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        episodes = min(episodes, 1)
    policy = Policy.load(checkpoint) if checkpoint else _policy(out, quick)
    spec = env_spec_for(policy, task, policy.observations)
    seeds = list(envs.eval_seeds(episodes))
    counts = sorted({1, *range(2, workers + 1)})
    rows, results, inference = [], {}, [0.0]
    real_act = policy.act

    def timed_act(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real_act(*args, **kwargs)
        finally:
            inference[0] += time.perf_counter() - t0

    policy.act = timed_act  # this instance only: a meter around the very call eval makes
    for w in counts:
        slots = [WorkerEnv(envs.make_from_spec, (spec,)) for _ in range(w)]
        inference[0] = 0.0
        try:
            for slot in slots:  # warm the workers (imports, first render) outside the timed part
                slot.submit("reset", seeds[0])
                slot.result()
            busy0 = [slot.timing for slot in slots]
            t0 = time.perf_counter()
            episodes_done = run_episodes(policy, slots, seeds)
            wall = time.perf_counter() - t0
            jobs = sum(s.timing[0] - b[0] for s, b in zip(slots, busy0))
            render = sum(s.timing[1] - b[1] for s, b in zip(slots, busy0))
        finally:
            for slot in slots:
                slot.close()
        results[w] = sorted((e.seed, e.success, e.length, e.actions_hash) for e in episodes_done)
        rows.append({"workers": w, "episodes_per_min": 60 * len(seeds) / wall, "wall_s": wall,
                     "physics_s": jobs - render, "render_s": render, "inference_s": inference[0]})
    del policy.act
    base = rows[0]["episodes_per_min"]
    identical = all(r == results[1] for r in results.values())
    print(f"\n{task}, {len(seeds)} episodes per setting, {'image' if spec.get('obs') == 'image' else 'state'} "
          f"observations; torch threads {torch.get_num_threads()}, {os.cpu_count()} cores")
    print(f"  {'workers':>7} {'episodes/min':>13} {'vs 1':>6} {'per worker':>10} {'physics s':>10} "
          f"{'render s':>9} {'inference s':>12} {'wall s':>7}")
    for r in rows:
        ratio = r["episodes_per_min"] / base
        r["ratio"], r["per_worker"] = ratio, ratio / r["workers"]
        print(f"  {r['workers']:>7} {r['episodes_per_min']:>13.1f} {ratio:>5.2f}x {r['per_worker']:>10.2f} "
              f"{r['physics_s']:>10.2f} {r['render_s']:>9.2f} {r['inference_s']:>12.2f} {r['wall_s']:>7.1f}")
    print("  (physics, render: seconds in the workers' env jobs, summed over workers; inference: seconds in the "
          "batched policy call, in this process)")
    print(f"  per-episode results (success, length, executed-actions hash) identical in every setting: "
          f"{'yes' if identical else 'NO'}")
    summary = {"task": task, "episodes": len(seeds), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
               "rows": rows, "identical": identical}
    (out / "bench-eval.json").write_text(json.dumps(summary, indent=1))
    return summary


__all__ = ["run_eval_bench"]
