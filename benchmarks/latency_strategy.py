"""The latency x strategy table: injected latency {0, 1, 2, 4} control periods x {replan, ensemble, rtc},
the same seeds for every cell (paired), on the lockstep clock (deterministic: a reply becomes visible
exactly the injected latency after its request, in simulated time), one task per head.

    python benchmarks/latency_strategy.py OUT.json CHECKPOINT:TASK [CHECKPOINT:TASK ...] [--episodes 30]
        [--latencies 0,1,2,4] [--strategies replan,ensemble,rtc] [--redo rtc]
    python benchmarks/latency_strategy.py merge OUT.json PART.json [PART.json ...]

Per cell: success, dropped actions (arrived after they were due), starved ticks (nothing due: the arm
held), chunks requested; per latency, rtc against replan on the same seeds: discordant pairs and
McNemar's exact p. Reruns resume (finished cells are kept, each with the commit it ran at; ``--redo S``
recomputes strategy S's cells). The policy runs in this process (LocalLink: the server's request handling without
the socket), one thread, so the figures do not depend on the machine's speed.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from robopolicy import provenance

STRATEGIES = ("replan", "ensemble", "rtc")


def cell(policy, task: str, seeds: list[int], strategy: str, periods: int) -> dict:
    from robopolicy.serve.loop import LoopConfig
    from robopolicy.serve.run import run
    from robopolicy.serve.service import LocalLink

    link = LocalLink(policy)
    try:
        latency = periods / link.metadata["control_hz"]
        t0 = time.time()
        result = run(link, f"sim:{task}", seeds, LoopConfig(strategy=strategy, inject_latency_s=latency),
                     lockstep=True, progress=False)
    finally:
        link.close()
    eps = result.episodes
    return {"strategy": strategy, "latency_periods": periods, "success": [bool(e.success) for e in eps],
            "success_rate": sum(e.success for e in eps) / len(eps), "dropped": sum(e.dropped for e in eps),
            "starved": sum(e.starved for e in eps), "chunks": sum(len(e.delay_ticks) for e in eps),
            "ended": sorted({e.ended for e in eps}), "wall_s": round(time.time() - t0, 1)}


def main(argv: list[str]) -> None:
    import torch

    from robopolicy import envs
    from robopolicy.checkpoints import checkpoint_hash
    from robopolicy.policy import Policy

    out = Path(argv[0])
    episodes = int(argv[argv.index("--episodes") + 1]) if "--episodes" in argv else 30
    latencies = [int(x) for x in argv[argv.index("--latencies") + 1].split(",")] if "--latencies" in argv \
        else [0, 1, 2, 4]
    strategies = argv[argv.index("--strategies") + 1].split(",") if "--strategies" in argv else list(STRATEGIES)
    redo = argv[argv.index("--redo") + 1].split(",") if "--redo" in argv else []
    pairs = [a for a in argv[1:] if ":" in a and not a.startswith("--")]
    commit = provenance.git("rev-parse", "HEAD")
    torch.set_num_threads(1)
    seeds = list(envs.eval_seeds(episodes))
    previous = json.loads(out.read_text()) if out.exists() else {}
    rows = {(r["checkpoint"], r["strategy"], r["latency_periods"]): r for r in previous.get("cells", [])
            if r["strategy"] not in redo}
    t0 = time.time()
    for pair in pairs:
        checkpoint, task = pair.rsplit(":", 1)
        policy = Policy.load(checkpoint).eval()
        ident = checkpoint_hash(checkpoint)
        for periods in latencies:
            for strategy in strategies:
                if (ident, strategy, periods) in rows:  # resumes: a finished cell is kept
                    continue
                r = cell(policy, task, seeds, strategy, periods)
                r.update(checkpoint=ident, head=policy.cfg.policy.head, task=task, n_obs=policy.cfg.data.n_obs,
                         n_action_steps=policy.cfg.data.n_action_steps, commit=commit)
                rows[(ident, strategy, periods)] = r
                print(f"{r['head']:9s} {task:10s} latency {periods} x period  {strategy:8s} success "
                      f"{r['success_rate']:.2f}  dropped {r['dropped']:5d}  starved {r['starved']:4d}  "
                      f"({r['wall_s']:.0f} s)", flush=True)
                _write(out, argv, rows, seeds, t0, previous)
    _write(out, argv, rows, seeds, t0, previous)
    print(table(list(rows.values())))


def paired(cells: list[dict]) -> list[dict]:
    """rtc against replan per checkpoint and latency, on the same seeds."""
    from robopolicy.eval.stats import mcnemar_exact

    out = []
    by = {(c["checkpoint"], c["strategy"], c["latency_periods"]): c for c in cells}
    for (ident, strategy, periods), c in sorted(by.items()):
        if strategy != "rtc" or (ident, "replan", periods) not in by:
            continue
        replan = by[(ident, "replan", periods)]["success"]
        b = sum(x and not y for x, y in zip(replan, c["success"]))
        d = sum(y and not x for x, y in zip(replan, c["success"]))
        out.append({"checkpoint": ident, "head": c["head"], "latency_periods": periods, "replan_only": b,
                    "rtc_only": d, "mcnemar_exact_p": mcnemar_exact(b, d)})
    return out


def table(cells: list[dict]) -> str:
    lines = ["| head | task | latency (periods) | replan | ensemble | rtc | rtc vs replan (McNemar p) |",
             "|---|---|---|---|---|---|---|"]
    by = {(c["checkpoint"], c["strategy"], c["latency_periods"]): c for c in cells}
    tests = {(p["checkpoint"], p["latency_periods"]): p for p in paired(cells)}
    for ident, periods in sorted({(c["checkpoint"], c["latency_periods"]) for c in cells},
                                 key=lambda x: (by.get((x[0], "replan", x[1]), {}).get("head", ""), x[1])):
        row = [by.get((ident, s, periods)) for s in STRATEGIES]
        any_row = next(r for r in row if r)
        p = tests.get((ident, periods))
        vs = "-" if p is None else f"+{p['rtc_only']} / -{p['replan_only']} (p={p['mcnemar_exact_p']:.2f})"
        lines.append(f"| {any_row['head']} | {any_row['task']} | {periods} | " +
                     " | ".join("-" if r is None else f"{r['success_rate']:.2f}" for r in row) + f" | {vs} |")
    return "\n".join(lines)


def _write(out: Path, argv, rows: dict, seeds, t0: float, previous: dict) -> None:
    cells = list(rows.values())
    result = {
        "command": "python benchmarks/latency_strategy.py " + " ".join(argv),
        "commit": provenance.git("rev-parse", "HEAD"),
        "machine": provenance.machine(), "clock": "lockstep",
        "episodes": len(seeds), "seeds": [seeds[0], seeds[-1]],
        "wall_s": previous.get("wall_s", 0.0) + (time.time() - t0),
        "cells": cells, "rtc_vs_replan": paired(cells), "table": table(cells),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


def merge(out: Path, parts: list[Path], note: str = "") -> None:
    """One artifact from per-head runs (each run's command and commit kept; ``note``: how they were run)."""
    runs = [json.loads(p.read_text()) for p in parts]
    cells = [c for r in runs for c in r["cells"]]
    result = {"commands": [r["command"] for r in runs], "commits": sorted({r["commit"] for r in runs}),
              "machine": runs[0]["machine"], "clock": "lockstep", "episodes": runs[0]["episodes"],
              "seeds": runs[0]["seeds"], "wall_s": sum(r["wall_s"] for r in runs), "cells": cells,
              "rtc_vs_replan": paired(cells), "table": table(cells), "note": note}
    out.write_text(json.dumps(result, indent=1))
    print(result["table"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["merge"]:  # merge OUT.json PART.json ... [--note TEXT]
        args = sys.argv[2:]
        note = args[args.index("--note") + 1] if "--note" in args else ""
        paths = [a for a in args if a.endswith(".json")]
        merge(Path(paths[0]), [Path(p) for p in paths[1:]], note)
    else:
        main(sys.argv[1:])
