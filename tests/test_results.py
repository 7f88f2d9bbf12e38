"""`robopolicy results`: cells made once and resumed, the README section generated from artifacts, and
a check that fails when the two disagree."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict

import pytest

from conftest import ROOT, run_cli
from robopolicy import results
from robopolicy.errors import ConfigError


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
    assert artifact["weights"] and isinstance(artifact["tree_clean"], bool)  # new artifacts: weights, clean tree
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
    assert results.paired(a, b) == "1 | 1 | 1 (3 seeds)"  # seed 4 and 5 are not shared: not counted
    assert results.paired(a, None).startswith("pending")



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
    first = tmp_path / "work" / "runs" / "staged" / "stage1"
    assert any(json.loads(line).get("stopped") for line in (first / "log.jsonl").read_text().splitlines())
    # made again without its artifact: neither stage retrains (the budget-stopped stage 1 counts as done)
    (tmp_path / "cells" / "staged.json").unlink()
    again = json.loads(results.run(plan, progress=False)[0].read_text())
    assert again["train_wall_parts_s"]["stage1"] == parts["stage1"] and again["checkpoint"] == artifact["checkpoint"]
    assert "-> cache -> ptp_stage2" in results.table(plan)


# ------------------------------------------------------------------ every figure from an artifact (issue 20)
def _artifact(cell: dict, wins: list[bool], commit: str = "a" * 40) -> dict:
    """A small artifact as `results run` writes it: its summary agrees with its episode records."""
    return {"cell": asdict(results.Cell(**cell)), "commit": commit, "successes": sum(wins), "trials": len(wins),
            "train_wall_s": 60.0, "config": {"train": {"steps": 3000}},
            "episodes": [{"seed": 1000 + i, "success": w, "length": 10} for i, w in enumerate(wins)]}


def _synthetic(tmp_path, prose: str = "", study: dict | None = None):
    """A plan of two reach cells with artifacts (A wins all 50 seeds, B the first 10), and a README made from
    them."""
    cells = [{"name": "reach.a", "task": "reach", "config": "ebt"}, {"name": "reach.b", "task": "reach",
                                                                     "config": "ebt", "seed": 1}]
    (tmp_path / "cells").mkdir()
    for cell, wins in zip(cells, ([True] * 50, [True] * 10 + [False] * 40)):
        (tmp_path / "cells" / f"{cell['name']}.json").write_text(json.dumps(_artifact(cell, wins)))
    plan = {"artifacts": "cells", "cells": cells, "compare": [["reach.a", "reach.b"]], "prose": prose}
    if study is not None:
        (tmp_path / "study.json").write_text(json.dumps(study))
        plan["studies"] = {"stall": "study.json"}
    (tmp_path / "results.yaml").write_text(json.dumps(plan))  # JSON is YAML
    plan = results.load_plan(tmp_path / "results.yaml")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{results.BEGIN}\n{results.END}\n")
    results.write_readme(plan, readme)
    return plan, readme


def _edit(path, **fields):
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_an_artifact_whose_summary_disagrees_with_its_episodes_is_refused(tmp_path):
    """`successes: 44` while all 50 episode records succeed: `table` and `--check` refuse it in one line
    (exit 2) naming the file, the field, both values and the fix, rather than print either figure."""
    plan, readme = _synthetic(tmp_path)
    assert results.check(plan, readme) is None and "| 50/50 = 1.00 |" in readme.read_text()
    _edit(plan.artifacts / "reach.a.json", successes=44)
    refused = r"cells/reach.a.json: `successes` says 44 but its episode records count 50; .*results run --only reach.a"
    with pytest.raises(results.ArtifactError, match=refused):
        results.table(plan)
    with pytest.raises(results.ArtifactError, match=refused):
        results.check(plan, readme)
    for action in ("table", "--check"):
        r = run_cli("results", action, "--plan", str(tmp_path / "results.yaml"), "--readme", str(readme))
        assert r.returncode == 2 and "says 44" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    _edit(plan.artifacts / "reach.a.json", successes=50, trials=49)
    with pytest.raises(results.ArtifactError, match="`trials` says 49 but its episode records count 50"):
        results.table(plan)
    # an artifact made for another definition of its cell (here 10 demos, the plan says 50)
    _edit(plan.artifacts / "reach.a.json", trials=50, cell={**json.loads((plan.artifacts / "reach.a.json")
                                                                        .read_text())["cell"], "demos": 10})
    with pytest.raises(results.ArtifactError, match="it ran demos=10 but the plan's cell says 50"):
        results.table(plan)


def test_a_study_whose_summary_disagrees_with_its_per_seed_records_is_refused(tmp_path):
    won = {str(1000 + i): i < 8 for i in range(50)}
    later = {str(1000 + i): i < 21 for i in range(50)}
    study = {"commit": "b" * 40, "shift": 12, "policies": {"P": {"cell": "reach.b", "rows": {
        "as it happened": {"successes": 8, "trials": 50, "success_by_seed": won},
        "later": {"successes": 21, "trials": 50, "success_by_seed": later,
                  "vs_as_it_happened": {"gained": 13, "lost": 0, "mcnemar_p": 0.000244140625}}}}}}
    plan, readme = _synthetic(tmp_path, "From {{stall|P|as it happened|successes}} to {{stall|P|later|successes}} "
                                        "(+{{stall|P|later|gained}}, p = {{stall|P|later|p}}), {{stall|shift}} on.",
                              study)
    assert "From 8 to 21 (+13, p = 0.00024), 12 on." in readme.read_text()
    for row in ({"successes": 22}, {"vs_as_it_happened": {"gained": 12, "lost": 0, "mcnemar_p": 0.000244140625}}):
        bad = json.loads(json.dumps(study))
        bad["policies"]["P"]["rows"]["later"].update(row)
        (tmp_path / "study.json").write_text(json.dumps(bad))
        with pytest.raises(results.ArtifactError, match=r"study.json: `policies.P.rows.later.(successes|gained)` "
                                                        "says (22|12) but its per-seed records count (21|13)"):
            results.check(plan, readme)


def test_a_changed_prose_figure_fails_the_check_naming_the_figure_and_its_source(tmp_path):
    prose = ("### What it says\n\n- A won {{successes|reach.a}} of {{trials|reach.a}} seeds and B "
             "{{successes|reach.b}}\n  (A only {{a_only|reach.a|reach.b}}, B only {{b_only|reach.a|reach.b}}, "
             "p = {{p|reach.a|reach.b}}).\n")
    plan, readme = _synthetic(tmp_path, prose)
    text = readme.read_text()
    assert "- A won 50 of 50 seeds and B 10 (A only 40, B only 0, p = 1.8e-12)." in text
    assert results.check(plan, readme) is None
    for typed, figure in (("B 10 (", "'11' should read '10': it is {{successes|reach.b}}, from the episode records "
                                     "of cells/reach.b.json"),
                          ("p = 1.8e-12", "'0.05' should read '1.8e-12': it is {{p|reach.a|reach.b}}, from the "
                                          "episode records of cells/reach.a.json and cells/reach.b.json")):
        readme.write_text(text.replace(typed, typed.replace("10", "11").replace("1.8e-12", "0.05")))
        problem = results.check(plan, readme)
        assert problem is not None and figure in problem and "robopolicy results table" in problem, problem
    # a figure typed into the template itself is refused: it could come from nowhere
    (tmp_path / "results.yaml").write_text((tmp_path / "results.yaml").read_text().replace(
        "{{successes|reach.b}}", "8 to 21"))
    with pytest.raises(ConfigError, match="prose line 3: '8' is a figure typed by hand"):
        results.table(results.load_plan(tmp_path / "results.yaml"))


def test_the_repository_prose_is_generated_and_a_changed_figure_in_it_fails_the_check(tmp_path):
    plan = results.load_plan(ROOT / "benchmarks" / "results.yaml")
    assert results.check(plan, ROOT / "README.md") is None
    lines = (ROOT / "README.md").read_text().splitlines()
    _, figures = results.generate(plan)
    # a figure of the no-PTP stall study, alone of its value on its line
    at, value, spec = next((at, v, s) for at, found in sorted(figures.items()) for v, s in found
                           if s.startswith("{{noptp_stall") and v.isdigit()
                           and len(re.findall(rf"\b{v}\b", lines[lines.index(results.BEGIN) + 1 + at])) == 1)
    k = lines.index(results.BEGIN) + 1 + at
    lines[k] = re.sub(rf"\b{value}\b", str(int(value) + 1), lines[k])
    (tmp_path / "README.md").write_text("\n".join(lines) + "\n")
    problem = results.check(plan, tmp_path / "README.md")
    assert problem is not None and f"should read '{value}': it is {spec}" in problem
    assert "noptp-stall-cue-reach-2core-cpu.json" in problem


def test_an_artifact_without_a_known_commit_is_refused_and_none_is_made_without_git(tmp_path, monkeypatch):
    plan, readme = _synthetic(tmp_path)
    for commit in ("unknown", None):
        _edit(plan.artifacts / "reach.b.json", commit=commit)
        with pytest.raises(results.ArtifactError, match=f"reach.b.json: its commit is {commit!r}, so nothing names"):
            results.table(plan)
        with pytest.raises(results.ArtifactError, match="its commit is"):
            results.check(plan, readme)
    # without git (or outside a checkout) `results run` refuses before it collects or trains anything
    (tmp_path / "cells" / "reach.b.json").unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    plan.cells[1].overrides = ["train.steps=2", "policy.ebt.n_layer=1", "policy.ebt.obs_layers=1",
                               "policy.ebt.n_emb=16", "data.batch_size=8", "train.tensorboard=false"]
    plan.cells[1].demos = plan.cells[1].episodes = 1
    with pytest.raises(ConfigError, match="cannot determine the git commit"):
        results.run(plan, only="reach.b", progress=False)
    assert not plan.work.exists()
