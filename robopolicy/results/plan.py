"""The results plan (``benchmarks/results.yaml``): its cells (a task, a shipped config with overrides, how many
expert demos, a training seed, how many evaluation episodes, K, ...), the pairs compared seed for seed, the
published figures quoted for context, the prose's template and the studies it quotes."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from robopolicy.errors import ConfigError

# the prose's placeholder kinds (prose.py); a study may not take one's name
KINDS = {"successes", "trials", "rate", "a_only", "b_only", "p", "cell", "config", "dependency"}


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
    prose: str = ""  # markdown after the tables; figures only as {{placeholders}} (results/prose.py)
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


def _group(c: Cell) -> str:
    return c.group or c.task + ("" if c.obs == "state" else f" ({c.obs} observations)")
