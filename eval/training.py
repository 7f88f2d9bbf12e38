"""Rollouts during training (``eval.every``): the EMA weights just checkpointed, rolled out on ``cfg.eval``'s
suite. The trainer calls them through its ``Rollouts`` interface and imports nothing of evaluation."""
from __future__ import annotations

import json
from pathlib import Path

from robopolicy.acting import Acting
from robopolicy.config import Config
from robopolicy.errors import ConfigError


class PeriodicRollouts:
    def __init__(self, cfg: Config):
        self.cfg, self.suite = cfg, None

    def start(self, policy) -> None:
        """The suite to roll out on: ``eval.suite``, else the task the training store was collected in."""
        from robopolicy.eval.suite import load_suite, task_suite

        overrides = {"episodes": self.cfg.eval.episodes}
        if self.cfg.eval.suite:
            self.suite = load_suite(self.cfg.eval.suite, **overrides)
        elif policy.task and policy.task.get("task"):
            self.suite = task_suite(policy.task["task"], policy.observations, **overrides)
        else:
            raise ConfigError("eval.every is set but the training store names no task: set eval.suite")

    def __call__(self, policy_dir: Path, out: Path) -> dict[str, float]:
        """Success per task; the records stay in ``out``. Rank 0 only: under DDP the other processes wait at
        their next all-reduce, so keep these short there."""
        from robopolicy.eval.report import summarize
        from robopolicy.eval.runner import Plan, evaluate, read_records, resolve_checkpoints

        folder = evaluate(Plan(self.suite, resolve_checkpoints(self.suite, str(policy_dir), None),
                               acting=Acting(k=self.cfg.eval.samples)), out, workers=self.cfg.eval.workers,
                          device=self.cfg.train.device, progress=False)
        meta = json.loads((folder / "run.json").read_text())
        return {t: row["success_rate"] for t, row in summarize(meta, read_records(folder))["tasks"].items()}
