"""A policy served to sim:<task> in wall-clock time at its control rate, against its offline evaluation on
the same seeds, paired per seed.

    python benchmarks/served_vs_offline.py CHECKPOINT OUT.json [--task reach] [--episodes 30] [--strategy replan]
        [--act-batch 8]

1. offline: `robopolicy eval`'s loop (run_episodes) on the evaluation seeds;
2. served, lockstep clock: `robopolicy serve` + `robopolicy run --lockstep` (must equal 1 action for action);
3. served, wall clock: the same at 80 Hz in real time, server and loop one core each (pinned with
   taskset where there is one).
Reports per-seed agreement of success, the discordant pairs with McNemar's exact p, the miss rate
(ticks more than half a period late), starved ticks and dropped actions, and round-trip percentiles.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from robopolicy import provenance


def _pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def _run(url: str, task: str, episodes: int, out: Path, lockstep: bool, strategy: str = "replan") -> list[dict]:
    cmd = _pin(0) + [sys.executable, "-m", "robopolicy.cli", "run", "--server", url, "--robot", f"sim:{task}",
                     "--episodes", str(episodes), "--out", str(out), "--quiet", "--strategy", strategy] + \
        (["--lockstep"] if lockstep else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        raise SystemExit(r.stderr)
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


def main(argv: list[str]) -> None:
    import numpy as np
    import torch

    from robopolicy import envs
    from robopolicy.bench.serve import start_server
    from robopolicy.checkpoints import checkpoint_hash
    from robopolicy.eval.rollout import LocalEnv, run_episodes
    from robopolicy.eval.stats import mcnemar_exact
    from robopolicy.policy import Policy

    checkpoint, out = argv[0], Path(argv[1])
    task = argv[argv.index("--task") + 1] if "--task" in argv else "reach"
    episodes = int(argv[argv.index("--episodes") + 1]) if "--episodes" in argv else 30
    strategy = argv[argv.index("--strategy") + 1] if "--strategy" in argv else "replan"
    act_batch = argv[argv.index("--act-batch") + 1] if "--act-batch" in argv else "8"
    torch.set_num_threads(1)
    t0 = time.time()
    seeds = list(envs.eval_seeds(episodes))
    policy = Policy.load(checkpoint)
    offline = {e.seed: e for e in run_episodes(policy, [LocalEnv(envs.make(task))], seeds)}
    folder = out.with_suffix("")
    runs = {}
    for name, lockstep_clock, batch, how in (("lockstep", True, "8", "replan"), ("wall", False, act_batch, strategy)):
        proc, url = start_server(checkpoint, pin=_pin(1), args=["--act-batch", batch])  # lockstep: eval's batch
        try:
            runs[name] = {r["seed"]: r for r in _run(url, task, episodes, folder / name, lockstep_clock, how)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    lockstep, wall = runs["lockstep"], runs["wall"]
    a = [offline[s].success for s in seeds]
    w = [wall[s]["success"] for s in seeds]
    b = sum(x and not y for x, y in zip(a, w))
    c = sum(y and not x for x, y in zip(a, w))
    ticks = sum(len(wall[s]["lateness_ms"]) for s in seeds)
    misses = sum(wall[s]["misses"] for s in seeds)
    trips = np.concatenate([wall[s]["round_trip_ms"] for s in seeds])
    result = {
        "command": "python benchmarks/served_vs_offline.py " + " ".join(argv),
        "commit": provenance.git("rev-parse", "HEAD"),
        "machine": provenance.machine(), "checkpoint": checkpoint_hash(checkpoint),
        "head": policy.cfg.policy.head, "task": task, "seeds": [seeds[0], seeds[-1]],
        "control_hz": (policy.task or {}).get("control_hz"),
        "wall_strategy": strategy, "server_act_batch": int(act_batch),
        "offline_success": float(np.mean(a)), "served_wall_success": float(np.mean(w)),
        "served_lockstep_success": float(np.mean([lockstep[s]["success"] for s in seeds])),
        "lockstep_identical_to_offline": sum(lockstep[s]["actions_hash"] == offline[s].actions_hash for s in seeds),
        "wall_success_agrees_per_seed": sum(x == y for x, y in zip(a, w)),
        "discordant": {"offline_only": b, "served_only": c}, "mcnemar_exact_p": mcnemar_exact(b, c),
        "wall_ticks": ticks, "wall_misses": misses, "wall_miss_rate": misses / max(ticks, 1),
        "wall_starved_ticks": sum(wall[s]["starved"] for s in seeds),
        "wall_dropped_actions": sum(wall[s]["dropped"] for s in seeds),
        "wall_round_trip_ms": {q: float(np.percentile(trips, int(q[1:]))) for q in ("p50", "p90", "p99")},
        "wall_s": time.time() - t0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
