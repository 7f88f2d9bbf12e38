"""The staged recipe, written once: demos -> stage 1 -> embedding cache -> stage 2 -> evaluation.

Each step has a folder and one marker in it, ``done.json`` (the wall-clock the step took, what it made), written
last. A step whose marker is there and whose output is intact is skipped; one without a marker is continued
(training from its last checkpoint, the cache and the evaluation from what they hold, the store after its last
episode); one whose marker outlived its output (a deleted policy) is redone. `robopolicy results`, `bench
history` and `bench eval` make their policies through it, and `robopolicy pipeline` runs it on a user's store,
so the recipe behind the project's figures is the one a user runs on their data.

A run folder (RUN) holds, for one stage, the training run itself (RUN/policy); for two, RUN/stage1,
RUN/cache (the stage-1 encoder's embeddings of every frame) and RUN/stage2 (the policy: stage 2 on the cache,
carrying the frozen stage-1 encoder); and RUN/eval when evaluated.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

MARKER = "done.json"


def done(folder: Path, output: str) -> dict | None:
    """The step's marker when it is there and ``folder / output`` too; else None (continue or redo it)."""
    folder = Path(folder)
    if (folder / MARKER).is_file() and (folder / output).exists():
        return json.loads((folder / MARKER).read_text())
    return None


def _mark(folder: Path, **info) -> None:
    tmp = Path(folder) / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(Path(folder) / MARKER)  # whole or not at all


def demos(task: str, episodes: int, path: str | Path, obs: str = "state", progress: bool = True) -> Path:
    """A store of ``episodes`` scripted-expert demos of ``task``; a store interrupted at any moment continues
    into the same episodes (collect's own resume)."""
    from robopolicy.collect import collect

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    store, _, _ = collect(task, episodes, path, obs=obs, progress=progress)
    store.close()
    return path


def trained(cfg, run: str | Path, store: str | Path | None = None, embeddings: str | Path | None = None,
            progress: bool = True, rollouts=None) -> Path:
    """``run``/policy: ``cfg`` trained on ``store`` (or on an embedding cache); continued from its last
    checkpoint, skipped once done."""
    from robopolicy.train.trainer import train

    run = Path(run)
    if done(run, "policy/model.safetensors") is not None:
        return run / "policy"
    resume = (run / "train_state.pt").exists()
    if not resume and run.exists():
        shutil.rmtree(run)  # stopped before its first checkpoint: nothing there to keep
    t0 = time.time()
    train(cfg, store, run, resume=resume, progress=progress, embeddings=embeddings, rollouts=rollouts)
    _mark(run, wall_s=time.time() - t0, steps=cfg.train.steps)
    return run / "policy"


def cached(policy: str | Path, store: str | Path, folder: str | Path, progress: bool = True) -> Path:
    """``folder``/embeddings.zarr: every frame of ``store`` embedded by ``policy``'s encoder (continued when
    interrupted; a cache of another encoder or store is refused)."""
    from robopolicy.embeddings import write_cache

    folder = Path(folder)
    if done(folder, "embeddings.zarr") is None:
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        write_cache(policy, store, folder / "embeddings.zarr", progress=progress)
        _mark(folder, wall_s=time.time() - t0)
    return folder / "embeddings.zarr"


def staged(cfg1, cfg2, run: str | Path, store: str | Path, progress: bool = True) -> Path:
    """Stage 1 (``cfg1``, end to end) -> its embedding cache -> stage 2 (``cfg2``, on the cache); returns the
    stage-2 policy, which acts on raw observations through the frozen stage-1 encoder."""
    run = Path(run)
    first = trained(cfg1, run / "stage1", store, progress=progress)
    cache = cached(first, store, run / "cache", progress=progress)
    return trained(cfg2, run / "stage2", embeddings=cache, progress=progress)


def wall(run: str | Path) -> dict | None:
    """Training wall-clock of a run, summed over its steps: {"s": total} and, for a staged run, its parts
    (stage1, cache, stage2); None while a step is unfinished."""
    run = Path(run)
    if (run / "stage1").is_dir():
        parts = {"stage1": done(run / "stage1", "policy"), "cache": done(run / "cache", "embeddings.zarr"),
                 "stage2": done(run / "stage2", "policy")}
        if None in parts.values():
            return None
        parts = {k: v["wall_s"] for k, v in parts.items()}
        return {"s": sum(parts.values()), **parts}
    marker = done(run, "policy")
    return None if marker is None else {"s": marker["wall_s"]}


def policy_of(run: str | Path) -> Path:
    """The policy a run folder ends in (RUN/policy, or RUN/stage2/policy for a staged run)."""
    run = Path(run)
    return run / "stage2" / "policy" if (run / "stage1").is_dir() else run / "policy"


def evaluated(plan, out: str | Path, workers: int = 1, progress: bool = True) -> Path:
    """``plan`` (eval/runner.Plan) evaluated into ``out``, continued from its records, skipped once done."""
    from robopolicy.eval.runner import evaluate

    out = Path(out)
    if done(out, "summary.json") is None:
        t0 = time.time()
        evaluate(plan, out, workers=workers, progress=progress)
        _mark(out, wall_s=time.time() - t0)
    return out
