"""`robopolicy results`: cells made once and resumed, the README section generated from artifacts, and
a check that fails when the two disagree."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from robopolicy.errors import ConfigError
from robopolicy.eval import results


def test_the_shipped_plan_loads_and_every_cell_builds_its_config():
    from robopolicy.config import load_config

    plan = results.load_plan(ROOT / "benchmarks" / "results.yaml")
    assert len(plan.cells) >= 21 and plan.artifacts == ROOT / "benchmarks" / "results" / "cells"
    for cell in plan.cells:
        load_config(cell.config, [*cell.overrides, f"train.seed={cell.seed}"])  # a typo in the plan fails here


def test_bad_plans_fail_with_one_clear_message(tmp_path):
    for text, match in (("cellz: []\n", "unknown keys"), ("cells:\n  - {name: a, task: reach, config: ebt, x: 1}\n",
                                                             "cell 0"),
                        ("cells:\n  - {name: a, task: reach, config: ebt}\n  - {name: a, task: reach, config: ebt}\n",
                         "repeated"),
                        ("cells:\n  - {name: a, task: reach, config: ebt, checkpoint_of: b}\n", "not a cell"),
                        ("cells:\n  - {name: a, task: reach, config: ebt}\ncompare: [[a, z]]\n", "two cell names"),
                        ("cells:\n  - {name: a, task: reach, config: ebt, act_on_score: hope}\n", "retry or refine"),
                        ("cells:\n  - {name: a, task: reach, config: ebt}\n"
                         "published: [{group: lift, figure: '1.00', source: a paper}]\n", "published entries")):
        (tmp_path / "p.yaml").write_text(text)
        with pytest.raises(ConfigError, match=match):
            results.load_plan(tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        results.load_plan(tmp_path / "nope.yaml")


def test_a_cell_is_made_once_resumed_tabled_and_checked(tmp_path):
    (tmp_path / "results.yaml").write_text(
        "work: work\nartifacts: cells\ncells:\n"
        "  - {name: reach.tiny, task: reach, config: diffusion, demos: 4, episodes: 2, label: tiny,\n"
        "     overrides: [train.steps=20, 'policy.diffusion.down_dims=[16,32]', data.batch_size=16,\n"
        "                 train.log_every=10, train.checkpoint_every=10, train.tensorboard=false]}\n"
        "  - {name: reach.later, task: reach, config: diffusion, demos: 4, episodes: 2}\n"
        "  - {name: reach.tiny.inpaint, task: reach, config: diffusion, checkpoint_of: reach.tiny,\n"
        "     inpaint_past: true, episodes: 2}\n"
        "compare: [[reach.tiny, reach.later]]\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{results.BEGIN}\nstale\n{results.END}\n\nafter\n")
    plan = results.load_plan(tmp_path / "results.yaml")
    written = results.run(plan, only="reach.tiny", progress=False)
    artifact = json.loads(written[0].read_text())
    assert artifact["trials"] == 2 and [e["seed"] for e in artifact["episodes"]] == sorted(e["seed"] for e in
                                                                                       artifact["episodes"])
    assert artifact["checkpoint"] and artifact["commit"] and artifact["versions"]["torch"]
    assert artifact["config"]["train"]["steps"] == 20 and artifact["train_wall_s"] > 0
    # made once: a second run makes nothing; without the artifact it re-evaluates but does not retrain
    assert results.run(plan, only="reach.tiny", progress=False) == []
    written[0].unlink()
    again = json.loads(results.run(plan, only="reach.tiny", progress=False)[0].read_text())
    assert again["train_wall_s"] == artifact["train_wall_s"] and again["checkpoint"] == artifact["checkpoint"]
    assert again["episodes"] == artifact["episodes"]  # the evaluation resumed from its records
    # a cell that evaluates another's policy another way: no training of its own
    other = json.loads(results.run(plan, only="reach.tiny.inpaint", progress=False)[0].read_text())
    assert other["checkpoint"] == artifact["checkpoint"] and other["train_wall_s"] == artifact["train_wall_s"]
    assert other["cell"]["inpaint_past"] and other["trials"] == 2
    # ... and it refuses a policy that is not the one the other cell's artifact evaluated (a retraining)
    (plan.artifacts / "reach.tiny.inpaint.json").unlink()
    recorded = plan.artifacts / "reach.tiny.json"
    kept = recorded.read_text()
    assert json.loads(kept)["weights"]  # compared by the weights alone: config files gain fields over time
    recorded.write_text(json.dumps({**json.loads(kept), "weights": "0" * 16}))
    with pytest.raises(ConfigError, match="training did not reproduce it"):
        results.run(plan, only="reach.tiny.inpaint", progress=False)
    recorded.write_text(kept)
    # the section comes from the artifacts; the check catches an edit
    assert results.check(plan, readme) is not None  # "stale"
    assert results.write_readme(plan, readme)
    text = readme.read_text()
    assert text.endswith("\n\nafter\n") and f"{artifact['successes']}/2" in text and "pending" in text
    assert "| A tiny vs B reach.later | pending" in text
    assert results.check(plan, readme) is None
    readme.write_text(text.replace(f"| {artifact['successes']}/2", "| 2/2" if artifact["successes"] != 2 else "| 0/2"))
    problem = results.check(plan, readme)
    assert problem is not None and "robopolicy results table" in problem
    r = subprocess.run([sys.executable, "-m", "robopolicy.cli", "results", "--check", "--plan",
                        str(tmp_path / "results.yaml"), "--readme", str(readme)], capture_output=True, text=True)
    assert r.returncode == 1 and "disagrees" in r.stderr and "Traceback" not in r.stderr


def test_published_figures_are_quoted_under_their_own_table_with_their_source(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "cells:\n  - {name: a, task: reach, config: ebt}\n  - {name: b, task: lift, config: ebt, group: standard}\n"
        "published: [{group: standard, figure: 'Lift 0.98', source: 'Chi et al.'}]\n")
    text = results.table(results.load_plan(tmp_path / "p.yaml"))
    reach, standard = text.index("**reach**"), text.index("**standard**")
    assert text.count("Lift 0.98 (Chi et al.)") == 1 and text.index("Lift 0.98") > standard > reach


def test_paired_rows_count_discordant_seeds():
    a = {"episodes": [{"seed": s, "success": w} for s, w in ((1, True), (2, True), (3, False), (4, True))]}
    b = {"episodes": [{"seed": s, "success": w} for s, w in ((1, False), (2, True), (3, True), (5, True))]}
    assert results._paired(a, b) == "1 | 1 | 1 (3 seeds)"  # seed 4 and 5 are not shared: not counted
    assert results._paired(a, None).startswith("pending")



def test_a_cell_acting_on_the_energy_calibrates_its_threshold_on_collection_seeds_only(tmp_path):
    """The retry/refine threshold is a quantile of per-chunk energies on collection seeds (the demos'
    initial conditions), recorded in the artifact; evaluation seeds never inform it, and the table says
    what the cell acted on."""
    from robopolicy.eval.runner import read_records

    (tmp_path / "results.yaml").write_text(
        "work: work\nartifacts: cells\ncells:\n"
        "  - {name: reach.ebt, task: reach, config: ebt, demos: 4, episodes: 2,\n"
        "     overrides: [train.steps=10, policy.ebt.n_layer=1, policy.ebt.obs_layers=1, policy.ebt.n_emb=16,\n"
        "                 data.batch_size=8, train.log_every=5, train.checkpoint_every=5, train.tensorboard=false]}\n"
        "  - {name: reach.ebt.refine, task: reach, config: ebt, demos: 4, episodes: 2, checkpoint_of: reach.ebt,\n"
        "     act_on_score: refine, score_quantile: 0.5, calibration_episodes: 2}\n")
    plan = results.load_plan(tmp_path / "results.yaml")
    artifact = json.loads(results.run(plan, only="reach.ebt.refine", progress=False)[0].read_text())
    calibration = artifact["calibration"]
    scores = [s[c] for r in read_records(plan.work / "evals" / "reach.ebt.refine.calibration")
              for s, c in zip(r["scores"], r["chosen"])]
    assert calibration["seeds"] == "collection" and calibration["chunks"] == len(scores) > 0
    assert min(scores) <= calibration["threshold"] <= max(scores)
    evaluated = {r["seed"] for r in read_records(plan.work / "evals" / "reach.ebt.refine")}
    calibrated = {r["seed"] for r in read_records(plan.work / "evals" / "reach.ebt.refine.calibration")}
    assert evaluated and calibrated and not evaluated & calibrated
    assert sum(e.get("refined", 0) for e in artifact["episodes"]) > 0  # about half the chunks were above it
    assert f"--refine-above q0.5 of collection-seed scores (= {calibration['threshold']:.3g})" in results.table(plan)


def test_a_staged_cell_trains_stage_one_caches_and_trains_stage_two_on_the_cache(tmp_path):
    """PTP's pipeline as one cell: stage 1 (here stopped by its time budget), the embedding cache, stage 2
    at To=16 on it; the artifact's training wall-clock is the sum of the three, and the policy evaluated
    is stage 2's (acting on raw images through stage 1's frozen encoder)."""
    small = ["data.batch_size=8", "train.log_every=5", "train.tensorboard=false"]
    (tmp_path / "results.yaml").write_text(
        "work: work\nartifacts: cells\ncells:\n"
        "  - {name: staged, task: cue-reach, obs: image, config: ptp_stage1, demos: 2, episodes: 1,\n"
        f"     overrides: [train.steps=100000, train.minutes=0.02, train.checkpoint_every=10, {', '.join(small)}],\n"
        f"     stage2: ptp_stage2, stage2_overrides: [train.steps=10, {', '.join(small)}]}}\n")
    plan = results.load_plan(tmp_path / "results.yaml")
    artifact = json.loads(results.run(plan, progress=False)[0].read_text())
    parts = artifact["train_wall_parts_s"]
    assert set(parts) == {"s", "stage1", "cache", "stage2"} and all(parts[k] > 0 for k in parts)
    assert parts["s"] == artifact["train_wall_s"] == pytest.approx(parts["stage1"] + parts["cache"] + parts["stage2"])
    assert parts["stage1"] >= 1.2 and artifact["config"]["data"]["n_obs"] == 16  # stage 2's config
    first = tmp_path / "work" / "runs" / "staged.stage1"
    assert any(json.loads(line).get("stopped") for line in (first / "log.jsonl").read_text().splitlines())
    # made again without its artifact: neither stage retrains (the budget-stopped stage 1 counts as done)
    (tmp_path / "cells" / "staged.json").unlink()
    again = json.loads(results.run(plan, progress=False)[0].read_text())
    assert again["train_wall_parts_s"]["stage1"] == parts["stage1"] and again["checkpoint"] == artifact["checkpoint"]
    assert "-> cache -> ptp_stage2" in results.table(plan)
