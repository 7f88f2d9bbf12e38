"""`robopolicy bench history`: does a long observation context pay where the past decides the action?

The papers' claim (PTP, algorithms.md §1.6-1.7): on history-dependent tasks a policy that sees 16
frames and predicts its past actions beats one that sees 2. This trains the same head twice on one
store of a memory task (cue-reach by default: the cue that names the target is gone 23 steps before
the expert turns toward it), once at To=16 (stride 6: 90 steps of history) and once at To=2, and
evaluates both on the same seeds, side by side, plus the To=16 policy with test-time self-verification
(8 candidates; the one whose predicted past is closest to the executed actions is executed):

    success with its Wilson 95% interval, split by the hidden variable (seed % 2: which target the
    cue marked), so a policy that always guesses the same side shows up as 1.00 / 0.00, not 0.50.

A run folder keeps the store and every trained policy (made through robopolicy/pipeline.py); rerunning with
the same --out resumes an interrupted training and reuses finished ones (delete a variant's folder to retrain
it).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from robopolicy import pipeline
from robopolicy.acting import Acting
from robopolicy.errors import ConfigError

# (label, folder, overrides on top of the config, candidates per chunk): the long-context head, the same
# policy with self-verification (8 candidates, the one whose predicted past matches the executed actions),
# and the no-history baseline
VARIANTS = [("To=16", "to16", [], 1), ("To=16 K=8", "to16", [], 8),
            ("To=2", "to2", ["data.n_obs=2", "data.horizon=16"], 1)]
QUICK = ["train.steps=20", "train.log_every=10", "train.checkpoint_every=20", "train.optim.warmup_steps=5",
         "data.batch_size=16"]


def run_history_bench(task: str = "cue-reach", episodes: int = 50, seeds: int = 50, config: str = "ptp",
                      out: str | Path | None = None, quick: bool = False, overrides: tuple[str, ...] = ()) -> dict:
    from robopolicy import envs
    from robopolicy.config import load_config
    from robopolicy.eval.rollout import rollouts
    from robopolicy.eval.stats import format_rate, wilson_interval
    from robopolicy.policy import Policy

    if task not in envs.TASKS:
        raise ConfigError(f"unknown task {task!r}; `robopolicy tasks` lists them")
    if not envs.TASKS[task].memory_span:
        print(f"note: {task} is not history-dependent (memory span 0); both contexts should do alike")
    if quick:
        episodes, seeds = min(episodes, 4), min(seeds, 4)
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="robopolicy-history-"))
    out.mkdir(parents=True, exist_ok=True)
    store = pipeline.demos(task, episodes, out / f"{task}-{episodes}.zarr", progress=True)

    results = {"task": task, "episodes": episodes, "seeds": seeds, "config": config, "variants": []}
    seed_list = list(envs.eval_seeds(seeds))
    for label, folder, extra, k in VARIANTS:
        print(f"\n== {label}: {config} {' '.join(extra)}", flush=True)
        run_overrides = list(overrides) + extra + (QUICK if quick else [])
        policy = Policy.load(pipeline.trained(load_config(config, run_overrides), out / folder, store))
        seconds = pipeline.done(out / folder, "policy")["wall_s"] or 0.0
        won = rollouts(policy, task, seed_list, progress=True, acting=Acting(k=k))
        by_hidden = [[w for s, w in zip(seed_list, won) if s % 2 == h] for h in (0, 1)]
        d = policy.cfg.data
        results["variants"].append({
            "label": label, "k": k, "n_obs": d.n_obs, "stride": d.stride, "horizon": d.horizon,
            "successes": int(sum(won)), "trials": len(won), "interval": wilson_interval(int(sum(won)), len(won)),
            "by_hidden": [(int(sum(h)), len(h)) for h in by_hidden], "train_s": seconds})

    print(f"\n{task}, {episodes} demos (state), {config}, {seeds} evaluation seeds each; run folder {out}")
    print(f"{'variant':<10} {'To':>3} {'stride':>6} {'history':>7} {'K':>2} {'success [Wilson 95%]':<26} "
          f"{'hidden=0':>9} {'hidden=1':>9} {'train':>7}")
    for v in results["variants"]:
        h0, h1 = v["by_hidden"]
        print(f"{v['label']:<10} {v['n_obs']:>3} {v['stride']:>6} {(v['n_obs'] - 1) * v['stride']:>7} {v['k']:>2} "
              f"{format_rate(v['successes'], v['trials']):<26} {h0[0]:>4}/{h0[1]:<4} {h1[0]:>4}/{h1[1]:<4} "
              f"{v['train_s'] / 60:>5.1f}m")
    print("(K=8: the To=16 policy sampling 8 candidates and executing the one whose predicted past is closest to "
          "the executed actions; the same weights)")
    long, short = results["variants"][0], results["variants"][-1]
    diff = long["successes"] / long["trials"] - short["successes"] / short["trials"]
    overlap = long["interval"][0] <= short["interval"][1]
    factory = envs.TASKS[task].factory
    hidden = (f"hidden = seed % 2 = {factory.hidden_name}" if getattr(factory, "hidden_per_seed", False)
              and getattr(factory, "hidden_name", "") else "seed % 2 carries no hidden variable in this task")
    print(f"To=16 - To=2: {diff:+.2f} ({'intervals overlap' if overlap else 'intervals disjoint'}); {hidden}")
    return results


__all__ = ["run_history_bench"]
