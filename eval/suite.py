"""Evaluation suites: YAML files in eval/suites/ naming tasks, seeds, episode limits, observations and
chunk execution. ``--task T`` is a one-task suite built on the fly.

Seeds come from the evaluation range (``envs.EVAL_SEED_START`` + ``seed_start`` on): no evaluation
episode was ever a demonstration. ``seeds: collection`` evaluates on the collection range instead,
Diffusion Policy's train-init diagnostic, and every output says so.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from robopolicy.errors import ConfigError

SUITE_DIR = Path(__file__).parent / "suites"


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[str, ...]
    episodes: int = 50  # per task
    seed_start: int = 0  # offset into the seed range
    seeds: str = "evaluation"  # "evaluation", or "collection" (the train-init diagnostic)
    max_steps: int | None = None  # cut episodes here (default: the task's own limit)
    obs: str = "state"  # "state" or "image"
    execute: int | None = None  # actions executed per chunk before replanning (default: the checkpoint's Ta)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        from robopolicy import envs

        for task in self.tasks:
            envs.get(task)  # an unknown task is a ConfigError naming the known ones
        if self.seeds not in ("evaluation", "collection"):
            raise ConfigError(f"suite {self.name}: seeds must be 'evaluation' or 'collection', got {self.seeds!r}")
        if self.obs not in ("state", "image"):
            raise ConfigError(f"suite {self.name}: obs must be 'state' or 'image', got {self.obs!r}")
        if self.episodes < 1 or (self.max_steps is not None and self.max_steps < 1) or \
                (self.execute is not None and self.execute < 1):
            raise ConfigError(f"suite {self.name}: episodes, max_steps and execute must be positive")
        if self.seed_start < 0:  # evaluation seeds below their start would be collection seeds
            raise ConfigError(f"suite {self.name}: seed_start must be >= 0, got {self.seed_start}")

    def seed_list(self, task: str) -> list[int]:
        """The task's seeds, in order (every task of a suite gets the same range)."""
        from robopolicy import envs

        if self.seeds == "collection":
            return list(envs.collection_seeds(self.seed_start, self.episodes))
        return list(envs.eval_seeds(self.episodes, self.seed_start))

    def fingerprint(self) -> str:
        """What makes two runs of a suite comparable: everything but its name."""
        body = {k: v for k, v in asdict(self).items() if k != "name"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def shipped_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def load_suite(name_or_path: str, **overrides) -> Suite:
    """A shipped suite by name or a YAML path; ``overrides`` (episodes, seed_start, seeds, ...) replace its
    values where not None."""
    from omegaconf import OmegaConf

    path = Path(name_or_path)
    if not path.suffix:
        path = SUITE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"no suite {name_or_path!r}: shipped suites are {', '.join(shipped_suites())}, or pass "
                          "the path of a YAML file")
    body = OmegaConf.to_container(OmegaConf.load(path)) or {}
    return suite_from(body, path.stem, **overrides)


def suite_from(body: dict, default_name: str, **overrides) -> Suite:
    known = {"name", "tasks", "episodes", "seed_start", "seeds", "max_steps", "obs", "execute"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ConfigError(f"suite {default_name}: unknown keys {unknown}; a suite has {sorted(known)}")
    if not body.get("tasks"):
        raise ConfigError(f"suite {default_name}: no tasks")
    body = {**body, **{k: v for k, v in overrides.items() if v is not None}}
    body["tasks"] = tuple([body["tasks"]] if isinstance(body["tasks"], str) else body["tasks"])
    body.setdefault("name", default_name)
    return Suite(**body)


def task_suite(task: str, obs: str = "state", **overrides) -> Suite:
    """``--task T``: a suite of one task (50 evaluation seeds unless told otherwise)."""
    return suite_from({"tasks": [task], "obs": obs}, f"task-{task}", **overrides)
