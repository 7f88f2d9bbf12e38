"""Making a cell's artifact: its demos, its policy (trained through robopolicy/pipeline.py, staged when the cell
says so), its evaluation, and ``<artifacts>/<cell>.json`` with the per-episode records, the policy's weights
hash, the config, the command, the commit and whether the tree was clean, package versions, the machine and the
training and evaluation wall-clock. Every step resumes, so a run spread over sessions picks up where it stopped;
the work folder is git-ignored, the artifacts are committed."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from robopolicy import pipeline, provenance
from robopolicy.acting import Acting
from robopolicy.errors import ConfigError
from robopolicy.results.artifacts import relative
from robopolicy.results.plan import Cell, ResultsPlan, select


def run(plan: ResultsPlan, only: str | None = None, workers: int = 1, progress: bool = True) -> list[Path]:
    """Make every selected cell that has no artifact yet; returns the artifacts written now."""
    provenance.commit()  # refuse before hours of training whose artifact could not name its code
    written = []
    for cell in select(plan, only):
        artifact = plan.artifacts / f"{cell.name}.json"
        if artifact.exists():
            continue
        print(f"== {cell.name}: {cell.config} {' '.join(cell.overrides)} on {cell.task} ({cell.demos} demos, "
              f"seed {cell.seed}, {cell.episodes} episodes, K={cell.k})", flush=True)
        written.append(make_cell(plan, cell, workers, progress))
    return written


def make_cell(plan: ResultsPlan, cell: Cell, workers: int = 1, progress: bool = True) -> Path:
    """Train the cell (or, with ``checkpoint_of``, make sure that cell's policy is trained), evaluate it,
    and write its artifact."""
    source = cell if cell.checkpoint_of is None else next(c for c in plan.cells if c.name == cell.checkpoint_of)
    policy, cfg = _trained(plan, source, progress)
    if cell.checkpoint_of is not None:
        _same_policy_as_artifact(plan, source, policy)
    return _evaluate_cell(plan, cell, source, policy, cfg, workers, progress)


def _same_policy_as_artifact(plan: ResultsPlan, source: Cell, policy_dir: Path) -> None:
    """A cell that evaluates another cell's policy another way is compared with that cell seed for seed, so it
    must evaluate the very policy the other's artifact did; a retraining (a fresh clone, another machine or
    torch build) need not reproduce it bit for bit. Compared by the weights' hash where the artifact has one
    (older artifacts hash the config file too, which gains fields as the code grows)."""
    from robopolicy.checkpoints import checkpoint_hash, weights_hash

    artifact = plan.artifacts / f"{source.name}.json"
    if not artifact.exists():
        return
    recorded = json.loads(artifact.read_text())
    kind, here = ("weights", weights_hash(policy_dir)) if "weights" in recorded else \
        ("checkpoint", checkpoint_hash(policy_dir))
    if here != recorded[kind]:
        raise ConfigError(f"cell {source.name}: the policy here ({kind} {here}) is not the one its artifact "
                          f"evaluated ({recorded[kind]}): training did not reproduce it (or, for a {kind} hash, "
                          "its config file changed), so a cell that evaluates it another way would be compared "
                          f"with another policy. Remake both: delete {relative(artifact, plan.root)} and the "
                          "artifacts of the cells that evaluate its policy, then run again")


def _store_path(plan: ResultsPlan, cell: Cell) -> Path:
    return plan.work / "stores" / f"{cell.task}-{cell.obs}-{cell.demos}.zarr"


def _trained(plan: ResultsPlan, cell: Cell, progress: bool):
    """(policy folder, its config): ``cell``'s demos collected and its policy trained through the pipeline (with
    ``stage2``: stage 1, its embedding cache, stage 2 on it), each step resumed or skipped once done."""
    from robopolicy.config import load_config

    store = pipeline.demos(cell.task, cell.demos, _store_path(plan, cell), obs=cell.obs, progress=progress)
    cfg = load_config(cell.config, [*cell.overrides, f"train.seed={cell.seed}"])
    cfg2 = None if cell.stage2 is None else load_config(cell.stage2, [*cell.stage2_overrides,
                                                                      f"train.seed={cell.seed}"])
    return pipeline.policy(cfg, plan.work / "runs" / cell.name, store, cfg2, progress=progress), cfg2 or cfg


def _evaluate_cell(plan: ResultsPlan, cell: Cell, source: Cell, policy: Path, cfg, workers: int,
                   progress: bool) -> Path:
    from robopolicy.checkpoints import checkpoint_hash, weights_hash
    from robopolicy.eval.runner import Plan, read_records
    from robopolicy.eval.suite import task_suite

    eval_dir = plan.work / "evals" / cell.name
    wall = pipeline.wall(plan.work / "runs" / source.name)
    suite = task_suite(cell.task, cell.obs, episodes=cell.episodes)
    t0 = time.time()
    calibration, acted = None, {}
    if cell.act_on_score:
        calibration = _calibrate(plan, cell, policy, workers, progress)
        acted = {f"{cell.act_on_score}_above": calibration["threshold"]}
    acting = Acting(k=cell.k, inpaint_past=cell.inpaint_past, **acted)
    pipeline.evaluated(Plan(suite, {cell.task: policy}, acting), eval_dir, workers=workers, progress=progress)
    records = sorted(read_records(eval_dir), key=lambda r: r["seed"])
    artifact = {
        "cell": asdict(cell), "command": f"robopolicy results run --only {cell.name}",
        "commit": provenance.commit(), "tree_clean": provenance.tree_clean(exclude=plan.artifacts),
        "machine": provenance.machine(),
        "versions": provenance.versions(), "checkpoint": checkpoint_hash(policy),  # weights + config file
        "weights": weights_hash(policy),  # the weights alone: what the table's figures stand on
        "config": _config_dict(cfg), "train_wall_s": wall and wall["s"],
        **({"train_wall_parts_s": wall} if wall and len(wall) > 1 else {}),
        "eval_wall_s": time.time() - t0, "successes": sum(bool(r["success"]) for r in records),
        "trials": len(records), "action_dependency": _action_dependency(eval_dir, cell.task, _store_path(plan, source)),
        **({"calibration": calibration} if calibration else {}),
        "episodes": [_episode(r) for r in records],
    }
    plan.artifacts.mkdir(parents=True, exist_ok=True)
    path = plan.artifacts / f"{cell.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(artifact, indent=1))
    tmp.replace(path)  # whole or not at all
    return path


def _calibrate(plan: ResultsPlan, cell: Cell, policy: Path, workers: int, progress: bool) -> dict:
    """The score threshold a cell acts on: the ``score_quantile`` of every executed chunk's score in
    rollouts on collection seeds (the demos' initial conditions), so no evaluation seed informs it."""
    import numpy as np

    from robopolicy.eval.runner import Plan, read_records
    from robopolicy.eval.suite import task_suite

    where = plan.work / "evals" / f"{cell.name}.calibration"
    suite = task_suite(cell.task, cell.obs, episodes=cell.calibration_episodes, seeds="collection")
    pipeline.evaluated(Plan(suite, {cell.task: policy}, acting=Acting(k=cell.k, inpaint_past=cell.inpaint_past)), where,
                       workers=workers, progress=progress)
    records = read_records(where)
    scores = [s[c] for r in records for s, c in zip(r["scores"], r["chosen"]) if s is not None]
    if not scores:
        raise ConfigError(f"cell {cell.name}: its policy scored no chunk on the calibration seeds, so there is no "
                          "score to act on (act_on_score needs a head with scores, or K > 1 with past evidence)")
    return {"seeds": "collection", "episodes": len(records), "chunks": len(scores), "quantile": cell.score_quantile,
            "threshold": float(np.quantile(scores, cell.score_quantile)),
            "success": sum(bool(r["success"]) for r in records)}


def _episode(record: dict) -> dict:
    """What an artifact keeps of an episode: its seed, success, length, the task's outcome, and the
    verifier's early score (eval/diagnostics.py) where chunks were scored."""
    from robopolicy.eval.diagnostics import early_score

    out = {"seed": record["seed"], "success": bool(record["success"]), "length": record["length"]}
    if record.get("outcome"):
        out["outcome"] = record["outcome"]
    score = early_score(record.get("scores") or [], record.get("chosen") or [])
    if score is not None:
        out["early_score"] = round(score, 6)
    for acted in ("retried", "refined"):
        if record.get(acted):
            out[acted] = record[acted]  # chunks the score was acted on
    return out


def _action_dependency(eval_dir: Path, task: str, store_path: Path) -> dict:
    """The copycat measure (eval/diagnostics.py) of the cell's rollouts and of its expert demos."""
    import numpy as np

    from robopolicy.data.store import DemoStore
    from robopolicy.eval.diagnostics import action_dependency

    rollouts = [np.load(p, allow_pickle=False) for p in sorted((eval_dir / "actions" / task).glob("*.npy"))]
    with DemoStore.open(store_path) as store:
        demos = [store.episode(i, ["action"])["action"] for i in range(store.n_episodes)]
    value = {"rollouts": action_dependency(rollouts), "expert": action_dependency(demos)}
    return {k: None if v is None else round(v, 4) for k, v in value.items()}


def _config_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
