"""`robopolicy pipeline` on a user's own store: the recipe behind the results (robopolicy/pipeline.py), each
step skipped once done and refused when asked to mean something else."""
from __future__ import annotations

import json

from conftest import run_cli

TINY = ["train.steps=20", "train.log_every=10", "data.batch_size=16", "policy.diffusion.down_dims=[16,32]",
        "train.tensorboard=false"]


def test_the_pipeline_trains_and_evaluates_a_users_store_then_skips_what_is_done(tmp_path):
    from robopolicy.collect import collect

    collect("reach", 6, tmp_path / "mine.zarr", progress=False)[0].close()  # the user's store
    run = tmp_path / "run"
    args = ["pipeline", "--config", "diffusion", "--store", str(tmp_path / "mine.zarr"), "--out", str(run),
            "--episodes", "2", "--workers", "1", "--quiet", *TINY]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert f"policy: {run / 'train' / 'policy'}" in first.stdout and "| reach | " in first.stdout
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["tasks"]["reach"]["episodes"] == 2
    log = (run / "train" / "log.jsonl").read_text()
    again = run_cli(*args)  # every step done: nothing retrained, nothing re-evaluated
    assert again.returncode == 0, again.stderr
    assert (run / "train" / "log.jsonl").read_text() == log
    assert json.loads((run / "eval" / "summary.json").read_text()) == summary
    # the same folder asked for another config: one line naming what differs, nothing deleted
    other = run_cli(*[a if a != "train.steps=20" else "train.steps=30" for a in args])
    assert other.returncode == 2 and "differs in train.steps" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1 and (run / "train" / "policy").is_dir()
