"""Wall-clock of every shipped evaluation suite on this machine, with small policies trained here.

    python benchmarks/suite_wallclock.py OUT_DIR [SUITE ...] [--workers 2] [--prepare-only]

For each task of a suite: 20 expert demos (the suite's observations) and a small diffusion policy
trained briefly (what it scores is not the point: how long the suite takes is, and failing policies
run their episodes to the time limit, the slow case). Then `robopolicy eval --suite S --checkpoints
OUT/policies --workers W`, timed. Writes OUT/suites.json (command, configs, commit, machine, per suite:
episodes, eval wall-clock, episodes/min, success per task); training time is reported apart.
Rerunning reuses the stores and policies in OUT.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from robopolicy import pipeline, provenance
from robopolicy.config import load_config
from robopolicy.eval.suite import load_suite, shipped_suites

STATE = ["train.steps=200", "policy.diffusion.down_dims=[32,64,128]", "data.batch_size=32", "train.log_every=100",
         "train.tensorboard=false"]
IMAGE = ["train.steps=100", "policy.diffusion.down_dims=[32,64,128]", "data.batch_size=16", "train.log_every=50",
         "train.tensorboard=false"]


def prepare(task: str, obs: str, out: Path) -> float:
    """Store + policy for one task, through the pipeline (reused once made); returns the seconds spent. The
    policy lands in OUT/policies/<obs>/<task>/policy, where `--checkpoints OUT/policies/<obs>` finds it."""
    t0 = time.perf_counter()
    store = pipeline.demos(task, 20, out / "stores" / f"{task}-{obs}.zarr", obs=obs, progress=False)
    cfg = load_config("diffusion" if obs == "state" else "diffusion_image", STATE if obs == "state" else IMAGE)
    pipeline.trained(cfg, out / "policies" / obs / task, store, progress=False)
    return time.perf_counter() - t0


def main(argv: list[str]) -> None:
    workers, prepare_only = 2, "--prepare-only" in argv
    argv = [a for a in argv if a != "--prepare-only"]
    if "--workers" in argv:
        i = argv.index("--workers")
        workers, argv = int(argv[i + 1]), argv[:i] + argv[i + 2:]
    out = Path(argv[0])
    suites = argv[1:] or [s for s in shipped_suites()]
    commit = provenance.git("rev-parse", "HEAD")
    path = out / "suites.json"
    results = json.loads(path.read_text()) if path.exists() else {
        "command": "python benchmarks/suite_wallclock.py " + " ".join(sys.argv[1:]), "commit": commit,
        "machine": provenance.machine(), "workers": workers,
        "policy_configs": {"state": ["diffusion", *STATE], "image": ["diffusion_image", *IMAGE]}, "suites": {}}
    for name in suites:
        suite = load_suite(name)
        prep = sum(prepare(task, suite.obs, out) for task in suite.tasks)
        if prepare_only:
            print(f"{name}: policies ready ({prep / 60:.1f} min)", flush=True)
            continue
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "robopolicy.cli", "eval", "--suite", name, "--checkpoints",
               str(out / "policies" / suite.obs), "--workers", str(workers), "--out", str(out / "evals" / name),
               "--quiet"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(done.stderr)
        summary = json.loads((out / "evals" / name / "summary.json").read_text())
        episodes = sum(t["episodes"] for t in summary["tasks"].values())
        results["suites"][name] = {
            "episodes": episodes, "eval_wall_s": wall, "episodes_per_min": 60 * episodes / wall,
            "prepare_s": prep, "success": {t: row["success_rate"] for t, row in summary["tasks"].items()},
            "command": " ".join(cmd[1:])}
        print(f"{name:<14} {episodes:>5} episodes  eval {wall / 60:6.1f} min  ({60 * episodes / wall:6.1f} "
              f"episodes/min; preparing the policies {prep / 60:.1f} min)", flush=True)
        path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
