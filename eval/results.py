"""`robopolicy results`: the results table, regenerated from committed artifacts.

A plan (``benchmarks/results.yaml``) lists cells: a task, a shipped config with overrides, how many expert
demos, a training seed, how many evaluation episodes (and K). ``run`` makes every cell that has no
artifact yet: it collects the demos, trains, evaluates, and writes ``<artifacts>/<cell>.json`` with the
per-episode records, the policy's weights hash, the config, the command, the commit and whether the tree
was clean, package versions, the machine and the training and evaluation wall-clock. Each step resumes (the
store continues, training resumes from its last checkpoint, evaluation from its records), so an interrupted
run, or one spread over sessions, picks up where it stopped; the work folder is git-ignored, the artifacts
are committed.
``table`` writes the README's results section from the artifacts alone, between two markers: the tables,
then the plan's ``prose:`` with each figure a placeholder filled from the artifacts (eval/results_prose.py);
``check`` (in CI) fails when the README and the artifacts disagree. No figure is typed by hand. Both recount
every figure from the per-episode records and refuse an artifact whose summary disagrees with them, or that
does not name its commit.
"""
from __future__ import annotations

import fnmatch
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from robopolicy.errors import ConfigError, RobopolicyError

BEGIN, END = "<!-- results:begin (robopolicy results table) -->", "<!-- results:end -->"


class ArtifactError(RobopolicyError):
    """An artifact the table cannot stand on: its summary disagrees with its episode records, it names no
    commit, or it was made for another definition of its cell."""


@dataclass
class Cell:
    name: str  # unique; names the artifact file
    task: str
    config: str  # a shipped config or a YAML path
    overrides: list[str] = field(default_factory=list)
    demos: int = 50
    episodes: int = 50  # evaluation episodes (evaluation seeds, the same for every cell of a task)
    seed: int = 0  # training seed
    obs: str = "state"
    k: int = 1  # candidates per chunk at evaluation
    inpaint_past: bool = False  # evaluate with the executed past inpainted (Policy.act's experiment)
    checkpoint_of: str | None = None  # evaluate another cell's trained policy (no training of its own)
    act_on_score: str | None = None  # "retry" or "refine": the verifier's score acted on (Policy.act), above ...
    score_quantile: float = 0.9  # ... this quantile of the per-chunk scores of rollouts on collection seeds
    calibration_episodes: int = 20  # (training seeds, never evaluation seeds: the threshold is not fit to the test)
    stage2: str | None = None  # a config trained on the cache of this cell's policy (PTP's staged pipeline:
    stage2_overrides: list[str] = field(default_factory=list)  # stage 1 short context end to end, cache, stage 2)
    label: str = ""  # what the table calls the row (default: the name)
    group: str = ""  # the table it is a row of (default: its task, and its observations unless state)


@dataclass
class ResultsPlan:
    cells: list[Cell]
    work: Path  # stores, runs, evaluations (git-ignored)
    artifacts: Path  # one JSON per cell (committed)
    path: Path | None = None
    root: Path = Path(".")  # what paths in the table are relative to (the repository)
    compare: list[tuple[str, str]] = field(default_factory=list)  # cell pairs tested on the same seeds
    # others' figures, quoted under a table with their source (never ours: no artifact stands behind them)
    published: list[dict] = field(default_factory=list)  # {group, figure, source}
    prose: str = ""  # markdown after the tables; figures only as {{placeholders}} (eval/results_prose.py)
    studies: dict[str, Path] = field(default_factory=dict)  # name -> other artifacts the prose quotes


def load_plan(path: str | Path) -> ResultsPlan:
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"results plan {path}: no such file (the shipped one is benchmarks/results.yaml)")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    unknown = set(raw) - {"work", "artifacts", "cells", "compare", "published", "prose", "studies"}
    if unknown:
        raise ConfigError(f"results plan {path}: unknown keys {sorted(unknown)} "
                          "(work, artifacts, cells, compare, published, prose, studies)")
    cells, names = [], set()
    for i, c in enumerate(raw.get("cells") or []):
        try:
            cell = Cell(**c)
        except TypeError as e:
            raise ConfigError(f"results plan {path}: cell {i}: {e} (fields: {', '.join(Cell.__dataclass_fields__)})"
                              ) from None
        if cell.name in names or not cell.name.replace(".", "").replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"results plan {path}: cell name {cell.name!r} is repeated or not [A-Za-z0-9._-]")
        if cell.act_on_score not in (None, "retry", "refine"):
            raise ConfigError(f"results plan {path}: cell {cell.name!r}: act_on_score must be retry or refine, "
                              f"got {cell.act_on_score!r}")
        names.add(cell.name)
        cells.append(cell)
    for cell in cells:
        if cell.checkpoint_of is not None and cell.checkpoint_of not in names:
            raise ConfigError(f"results plan {path}: cell {cell.name!r} evaluates {cell.checkpoint_of!r}, "
                              "which is not a cell of the plan")
    compare = [tuple(pair) for pair in raw.get("compare") or []]
    bad = [p for p in compare if len(p) != 2 or not set(p) <= names]
    if bad:
        raise ConfigError(f"results plan {path}: compare entries must be two cell names, got {bad}")
    published = raw.get("published") or []
    groups = {_group(c) for c in cells}
    bad = [q for q in published if not isinstance(q, dict) or set(q) != {"group", "figure", "source"}
           or q["group"] not in groups]
    if bad:
        raise ConfigError(f"results plan {path}: published entries need group (one of the tables: "
                          f"{sorted(groups)}), figure and source; got {bad}")
    from robopolicy.eval.results_prose import KINDS

    studies = raw.get("studies") or {}
    bad = [n for n in studies if n in KINDS or not str(n).isidentifier()]
    if bad:
        raise ConfigError(f"results plan {path}: study names must be identifiers other than {sorted(KINDS)}, "
                          f"got {bad}")
    root = path.parent.parent if path.parent.name == "benchmarks" else path.parent
    return ResultsPlan(cells, root / raw.get("work", "runs/results"),
                       root / raw.get("artifacts", "benchmarks/results/cells"), path, root, compare, published,
                       raw.get("prose") or "", {n: root / f for n, f in studies.items()})


def select(plan: ResultsPlan, only: str | None) -> list[Cell]:
    cells = [c for c in plan.cells if only is None or fnmatch.fnmatch(c.name, only)]
    if only is not None and not cells:
        raise ConfigError(f"no cell of {plan.path} matches {only!r}")
    return cells


# ------------------------------------------------------------------ making cells
def run(plan: ResultsPlan, only: str | None = None, workers: int = 1, progress: bool = True) -> list[Path]:
    """Make every selected cell that has no artifact yet; returns the artifacts written now."""
    _commit()  # refuse before hours of training whose artifact could not name its code
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
    cfg = _train_cell(plan, source, progress)
    run_dir = plan.work / "runs" / source.name
    if cell.checkpoint_of is not None:
        _same_policy_as_artifact(plan, source, run_dir / "policy")
    return _evaluate_cell(plan, cell, run_dir, cfg, workers, progress, _store_path(plan, source))


def _same_policy_as_artifact(plan: ResultsPlan, source: Cell, policy_dir: Path) -> None:
    """A cell that evaluates another cell's policy another way is compared with that cell seed for seed, so it
    must evaluate the very policy the other's artifact did; a retraining (a fresh clone, another machine or
    torch build) need not reproduce it bit for bit. Compared by the weights' hash where the artifact has one
    (older artifacts hash the config file too, which gains fields as the code grows)."""
    from robopolicy.policy import checkpoint_hash, weights_hash

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
                          f"with another policy. Remake both: delete {_relative(artifact, plan.root)} and the "
                          "artifacts of the cells that evaluate its policy, then run again")


def _store_path(plan: ResultsPlan, cell: Cell) -> Path:
    return plan.work / "stores" / f"{cell.task}-{cell.obs}-{cell.demos}.zarr"


def _train_cell(plan: ResultsPlan, cell: Cell, progress: bool):
    """Collect and train ``cell`` (each step resumable; with ``stage2``: stage 1, its embedding cache,
    stage 2 on it); returns the config of the policy the cell evaluates."""
    from robopolicy.collect import collect
    from robopolicy.config import load_config
    from robopolicy.data.embeddings import write_cache

    store_path = _store_path(plan, cell)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store, _, _ = collect(cell.task, cell.demos, store_path, obs=cell.obs, progress=progress)
    store.close()
    cfg = load_config(cell.config, [*cell.overrides, f"train.seed={cell.seed}"])
    if cell.stage2 is None:
        _train_run(cfg, plan.work / "runs" / cell.name, progress, store_path=store_path)
        return cfg
    first = plan.work / "runs" / f"{cell.name}.stage1"
    _train_run(cfg, first, progress, store_path=store_path)
    t0 = time.time()
    cache = write_cache(first / "policy", store_path, progress=progress)  # resumes; refuses a stale cache
    _add_seconds(first / "cache_wall_s.json", time.time() - t0)
    cfg2 = load_config(cell.stage2, [*cell.stage2_overrides, f"train.seed={cell.seed}"])
    _train_run(cfg2, plan.work / "runs" / cell.name, progress, embeddings=cache)
    return cfg2


def _train_run(cfg, run_dir: Path, progress: bool, store_path: Path | None = None, embeddings: Path | None = None):
    from robopolicy.train.trainer import train

    if _unfinished(run_dir, cfg.train.steps):
        resume = (run_dir / "train_state.pt").exists()
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing there to keep
        t0 = time.time()
        train(cfg, store_path, run_dir, resume=resume, progress=progress, embeddings=embeddings)
        _add_seconds(run_dir / "train_wall_s.json", time.time() - t0)


def _add_seconds(clock: Path, seconds: float) -> None:
    """Wall-clock summed over the sessions a step took."""
    spent = json.loads(clock.read_text())["s"] if clock.exists() else 0.0
    clock.write_text(json.dumps({"s": spent + seconds}))


def _train_wall(plan: ResultsPlan, cell: Cell, run_dir: Path) -> dict | None:
    """Training wall-clock in seconds: {"s": total} and, for a staged cell, its parts."""
    def read(clock: Path):
        return json.loads(clock.read_text())["s"] if clock.exists() else None

    if cell.stage2 is None:
        total = read(run_dir / "train_wall_s.json")
        return None if total is None else {"s": total}
    first = plan.work / "runs" / f"{cell.name}.stage1"
    parts = {"stage1": read(first / "train_wall_s.json"), "cache": read(first / "cache_wall_s.json"),
             "stage2": read(run_dir / "train_wall_s.json")}
    if None in parts.values():
        return None
    return {"s": sum(parts.values()), **parts}


def _evaluate_cell(plan: ResultsPlan, cell: Cell, run_dir: Path, cfg, workers: int, progress: bool,
                   store_path: Path) -> Path:
    from robopolicy.eval.runner import Plan, evaluate, read_records
    from robopolicy.eval.suite import task_suite
    from robopolicy.policy import checkpoint_hash, weights_hash

    eval_dir = plan.work / "evals" / cell.name
    source = cell if cell.checkpoint_of is None else next(c for c in plan.cells if c.name == cell.checkpoint_of)
    wall = _train_wall(plan, source, run_dir)
    suite = task_suite(cell.task, cell.obs, episodes=cell.episodes)
    t0 = time.time()
    calibration, acted = None, {}
    if cell.act_on_score:
        calibration = _calibrate(plan, cell, run_dir, workers, progress)
        acted = {f"{cell.act_on_score}_above": calibration["threshold"]}
    evaluate(Plan(suite, {cell.task: run_dir / "policy"}, k=cell.k, inpaint_past=cell.inpaint_past, **acted),
             eval_dir, workers=workers, progress=progress)
    records = sorted(read_records(eval_dir), key=lambda r: r["seed"])
    artifact = {
        "cell": asdict(cell), "command": f"robopolicy results run --only {cell.name}",
        "commit": _commit(), "tree_clean": _tree_clean(plan),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "versions": _versions(), "checkpoint": checkpoint_hash(run_dir / "policy"),  # weights + config file
        "weights": weights_hash(run_dir / "policy"),  # the weights alone: what the table's figures stand on
        "config": _config_dict(cfg), "train_wall_s": wall and wall["s"],
        **({"train_wall_parts_s": wall} if wall and len(wall) > 1 else {}),
        "eval_wall_s": time.time() - t0, "successes": sum(bool(r["success"]) for r in records),
        "trials": len(records), "action_dependency": _action_dependency(eval_dir, cell.task, store_path),
        **({"calibration": calibration} if calibration else {}),
        "episodes": [_episode(r) for r in records],
    }
    plan.artifacts.mkdir(parents=True, exist_ok=True)
    path = plan.artifacts / f"{cell.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(artifact, indent=1))
    tmp.replace(path)  # whole or not at all
    return path


def _calibrate(plan: ResultsPlan, cell: Cell, run_dir: Path, workers: int, progress: bool) -> dict:
    """The score threshold a cell acts on: the ``score_quantile`` of every executed chunk's score in
    rollouts on collection seeds (the demos' initial conditions), so no evaluation seed informs it."""
    import numpy as np

    from robopolicy.eval.runner import Plan, evaluate, read_records
    from robopolicy.eval.suite import task_suite

    where = plan.work / "evals" / f"{cell.name}.calibration"
    suite = task_suite(cell.task, cell.obs, episodes=cell.calibration_episodes, seeds="collection")
    evaluate(Plan(suite, {cell.task: run_dir / "policy"}, k=cell.k, inpaint_past=cell.inpaint_past), where,
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


def _unfinished(run_dir: Path, steps: int) -> bool:
    """Training has neither reached its last step nor spent its time budget (or wrote no policy yet)."""
    log = run_dir / "log.jsonl"
    if not log.exists() or not (run_dir / "policy" / "model.safetensors").exists():
        return True
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if any(row.get("stopped") for row in rows):
        return False
    return max((row.get("step", 0) for row in rows), default=0) < steps


def _config_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _git(*args: str) -> str | None:
    """git's answer in this code's checkout; None when git is missing or this is not a checkout."""
    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _commit() -> str:
    commit = _git("rev-parse", "HEAD")
    if not commit:
        raise ConfigError("cannot determine the git commit of this code (`git rev-parse HEAD` failed): every "
                          "artifact names the code that made it, so run `robopolicy results run` from the "
                          "repository's git checkout, with git installed")
    return commit


def _tree_clean(plan: ResultsPlan) -> bool:
    """No uncommitted change besides the artifacts themselves (a run writes one per cell as it goes)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None:
        return False
    try:
        skip = [f":(top,exclude){plan.artifacts.resolve().relative_to(Path(top).resolve())}"]
    except ValueError:
        skip = []  # artifacts outside the checkout
    status = _git("status", "--porcelain", "--", ":(top)", *skip)
    return status == ""


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("robopolicy", "torch", "numpy", "mujoco", "metaworld", "diffusers", "zarr"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------ the table
def read_artifacts(plan: ResultsPlan) -> dict[str, dict]:
    """The plan's artifacts, each refused unless its summary agrees with its episode records, it names its
    commit and it ran the cell the plan defines (so the table never prints a figure it cannot recount)."""
    out = {}
    for cell in plan.cells:
        path = plan.artifacts / f"{cell.name}.json"
        if path.exists():
            try:
                out[cell.name] = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: not valid JSON ({e}); remove it and rerun `robopolicy results run`"
                                  ) from None
            _vet(plan, cell, out[cell.name], path)
    return out


def counts(a: dict) -> tuple[int, int]:
    """(successes, trials), counted from the episode records, never read from the summary."""
    return sum(bool(e["success"]) for e in a["episodes"]), len(a["episodes"])


def known_commit(commit) -> bool:
    """A full git hash (older code wrote "unknown" when git could not tell)."""
    return isinstance(commit, str) and len(commit) == 40 and all(ch in "0123456789abcdef" for ch in commit)


def _vet(plan: ResultsPlan, cell: Cell, a: dict, path: Path) -> None:
    where, fix = _relative(path, plan.root), f"delete it and run `robopolicy results run --only {cell.name}`"
    commit = a.get("commit")
    if not known_commit(commit):
        raise ArtifactError(f"{where}: its commit is {commit!r}, so nothing names the code that made it; "
                            f"remake it from a git checkout: {fix}")
    episodes = a.get("episodes") or []
    seeds = [e.get("seed") for e in episodes]
    if not episodes or len(set(seeds)) != len(seeds):
        raise ArtifactError(f"{where}: its episode records are missing or repeat seeds; {fix}")
    successes, trials = counts(a)
    for key, recount in (("trials", trials), ("successes", successes)):
        if a.get(key) != recount:
            raise ArtifactError(f"{where}: `{key}` says {a.get(key)} but its episode records count {recount}; "
                                f"the artifact contradicts itself: {fix}")
    ran, planned = a.get("cell") or {}, asdict(cell)
    for key in planned.keys() - {"label", "group"}:  # fields added since an older artifact was made: skipped
        if key in ran and ran[key] != planned[key]:
            raise ArtifactError(f"{where}: it ran {key}={ran[key]!r} but the plan's cell says {planned[key]!r}; "
                                f"restore the plan or remake the cell: {fix}")


def table(plan: ResultsPlan) -> str:
    """The README's results section, from the artifacts alone (cells without one are listed as pending)."""
    return _generate(plan)[0]


def _generate(plan: ResultsPlan) -> tuple[str, dict[int, list[tuple[str, str]]]]:
    """The section and, by line (0-based), the figures its prose filled in: (value, placeholder)."""
    from robopolicy.eval import results_prose
    from robopolicy.eval.stats import wilson_interval

    found = read_artifacts(plan)
    studies = results_prose.read_studies(plan, found)
    others = "".join(f" and `{_relative(p, plan.root)}`" for p in plan.studies.values())
    lines = [f"Generated by `robopolicy results table` from `{_relative(plan.artifacts, plan.root)}/` "
             f"({len(found)} of {len(plan.cells)} cells of `{plan.path.name if plan.path else 'the plan'}`)"
             f"{others}, every figure recounted from their per-episode records; `robopolicy results --check` (CI) "
             "fails if this section and the artifacts disagree.", ""]
    for group in dict.fromkeys(_group(c) for c in plan.cells):
        cells = [c for c in plan.cells if _group(c) == group]
        lines += [f"**{group}**", "", "| cell | config | demos | K | success | 95% Wilson | train (min) | "
                  "a(t+1) from a(t), R^2 (expert) | failures, by how they ended |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in cells:
            a = found.get(c.name)
            config = " ".join([c.config, *c.overrides, f"seed={c.seed}"]) if c.checkpoint_of is None else \
                f"{c.checkpoint_of}'s policy"
            if c.stage2:
                config += " -> cache -> " + " ".join([c.stage2, *c.stage2_overrides])
            config += " --inpaint-past" if c.inpaint_past else ""
            if c.act_on_score:
                t = (a or {}).get("calibration", {}).get("threshold")
                config += (f" --{c.act_on_score}-above q{c.score_quantile:g} of collection-seed scores"
                           + ("" if t is None else f" (= {t:.3g})"))
            if a is None:
                lines.append(f"| {c.label or c.name} | `{config}` | {c.demos} | {c.k} | pending | | | | |")
                continue
            won, trials = counts(a)
            lo, hi = wilson_interval(won, trials)
            minutes = "-" if a.get("train_wall_s") is None else f"{a['train_wall_s'] / 60:.1f}"
            if a.get("train_wall_parts_s"):
                minutes += " (" + " + ".join(f"{a['train_wall_parts_s'][k] / 60:.1f}"
                                             for k in ("stage1", "cache", "stage2")) + ")"
            lines.append(f"| {c.label or c.name} | `{config}` | {c.demos} | {c.k} | {won}/{trials} "
                         f"= {won / trials:.2f} | [{lo:.2f}, {hi:.2f}] | {minutes} | "
                         f"{_dependency(a)} | {_failures(c.task, a)} |")
        lines.append("")
        scored = [(c, found[c.name]) for c in cells if c.name in found and _scored(found[c.name])]
        if scored:
            lines += ["| does the verifier's early score predict failure? | score | episodes scored (failed) | AUROC "
                      "| shuffled 95% | permutation p |", "|---|---|---|---|---|---|"]
            lines += [_score_row(c, a) for c, a in scored]
            lines.append("")
        pairs = [(x, y) for x, y in plan.compare if x in {c.name for c in cells}]
        if pairs:
            lines += ["| paired, the same seeds | A only | B only | McNemar exact p |", "|---|---|---|---|"]
            labels = {c.name: c.label or c.name for c in cells}
            for x, y in pairs:
                lines.append(f"| A {labels[x]} vs B {labels[y]} | " + _paired(found.get(x), found.get(y)) + " |")
            lines.append("")
        quoted = [q for q in plan.published if q["group"] == group]
        if quoted:
            lines += ["Published, for context (their demonstrations, observations and compute, not ours):", ""]
            lines += [f"- {q['figure']} ({q['source']})" for q in quoted]
            lines.append("")
    figures = {}
    if plan.prose.strip():
        start = "\n".join(lines).rstrip().count("\n") + 2  # after one blank line
        prose, filled = results_prose.render(plan, found, studies)
        lines = ["\n".join(lines).rstrip(), "", *prose]
        figures = {start + i: f for i, f in enumerate(filled) if f}
    return "\n".join(lines).rstrip() + "\n", figures


def _dependency(a: dict) -> str:
    d = a.get("action_dependency") or {}
    if d.get("rollouts") is None:
        return "-"
    return f"{d['rollouts']:.2f} ({d['expert']:.2f})" if d.get("expert") is not None else f"{d['rollouts']:.2f}"


def _group(c: Cell) -> str:
    return c.group or c.task + ("" if c.obs == "state" else f" ({c.obs} observations)")


def _failures(task: str, a: dict) -> str:
    from robopolicy.eval.diagnostics import failure_distances, failure_kinds

    kinds = failure_kinds(task, a["episodes"])
    if kinds is None:
        return "-"
    far = failure_distances(task, a["episodes"])
    return ", ".join(f"{n} {k}" + (f" (median {far[k]:.3f} m from it)" if k in far else "") for k, n in kinds.items())


def _scored(a: dict) -> bool:
    """Enough scored episodes of both kinds for an AUROC: at least 10 failures and 10 successes."""
    won = [e["success"] for e in a["episodes"] if "early_score" in e]
    return sum(won) >= 10 and len(won) - sum(won) >= 10


def _score_row(c: Cell, a: dict) -> str:
    from robopolicy.eval.diagnostics import EARLY_CHUNKS, auroc, shuffled_auroc

    eps = [e for e in a["episodes"] if "early_score" in e]
    scores, failed = [e["early_score"] for e in eps], [not e["success"] for e in eps]
    lo, hi, p = shuffled_auroc(scores, failed)
    what = "energy" if a["config"]["policy"]["head"] == "ebt" else "past mismatch"
    return (f"| {c.label or c.name} | {what}, first {EARLY_CHUNKS} scored chunks | {len(eps)} ({sum(failed)}) | "
            f"{auroc(scores, failed):.2f} | [{lo:.2f}, {hi:.2f}] | {p:.3g} |")


def _paired(a: dict | None, b: dict | None) -> str:
    from robopolicy.eval.stats import mcnemar_exact

    if a is None or b is None:
        return "pending | | "
    only_a, only_b, seeds = discordant(a, b)
    return f"{only_a} | {only_b} | {mcnemar_exact(only_a, only_b):.3g} ({seeds} seeds)"


def discordant(a: dict, b: dict) -> tuple[int, int, int]:
    """Seeds only A won, seeds only B won, and how many seeds they share, from the episode records."""
    won_a = {e["seed"]: bool(e["success"]) for e in a["episodes"]}
    won_b = {e["seed"]: bool(e["success"]) for e in b["episodes"]}
    seeds = set(won_a) & set(won_b)
    return (sum(won_a[s] and not won_b[s] for s in seeds), sum(won_b[s] and not won_a[s] for s in seeds),
            len(seeds))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _read(readme: Path) -> str:
    if not readme.is_file():
        raise ConfigError(f"{readme}: no such file (pass --readme README.md)")
    return readme.read_text()


def _section(readme: str, path: Path) -> tuple[int, int]:
    a, b = readme.find(BEGIN), readme.find(END)
    if a < 0 or b < a:
        raise ConfigError(f"{path} has no results section: add the lines\n{BEGIN}\n{END}\nwhere it belongs")
    return a + len(BEGIN), b


def write_readme(plan: ResultsPlan, readme: str | Path) -> bool:
    """Regenerate the section; returns whether it changed."""
    readme = Path(readme)
    text = _read(readme)
    a, b = _section(text, readme)
    new = text[:a] + "\n" + table(plan) + text[b:]
    if new != text:
        readme.write_text(new)
    return new != text


def check(plan: ResultsPlan, readme: str | Path) -> str | None:
    """None when the README's section (tables and prose) is what the artifacts generate; else what differs,
    in one message that names the first figure that differs and where it comes from. Raises ArtifactError
    on an artifact the table would refuse."""
    from robopolicy.eval.results_prose import which_figure

    readme = Path(readme)
    text = _read(readme)
    a, b = _section(text, readme)
    generated, figures = _generate(plan)
    have, want = text[a:b].strip("\n"), generated.strip("\n")
    if have == want:
        return None
    diff = next((i for i, (x, y) in enumerate(zip(have.splitlines(), want.splitlines())) if x != y),
                min(len(have.splitlines()), len(want.splitlines())))
    got = (have.splitlines() + [""])[diff]
    exp = (want.splitlines() + [""])[diff]
    figure = which_figure(plan, got, exp, figures.get(diff, []))
    return (f"{readme}: the results section disagrees with the artifacts at its line {diff + 1}:\n  README:    {got}\n"
            f"  artifacts: {exp}\n{figure}run `robopolicy results table` to regenerate it (never edit it by hand: "
            f"its prose is `prose:` in {plan.path.name if plan.path else 'the plan'})")
