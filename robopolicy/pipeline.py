"""The staged recipe, written once: demos -> stage 1 -> embedding cache -> stage 2 -> evaluation.

Each step has a folder and one marker in it, ``done.json`` (the wall-clock the step took, what it made), written
last. A step whose marker is there and whose output is intact is skipped; one without a marker is continued
(training from its last checkpoint, the cache and the evaluation from what they hold, the store after its last
episode); one whose marker outlived its output (a deleted policy) is redone. `robopolicy results`, `bench
history` and `bench eval` make their policies through it, and `robopolicy pipeline` runs it on a user's store,
so the recipe behind the project's figures is the one a user runs on their data.

A run folder (RUN) holds, for one stage, the training run RUN/train; for two, RUN/stage1, RUN/cache (the stage-1
encoder's embeddings of every frame) and RUN/stage2 (stage 2 trained on the cache: the policy, carrying the
frozen stage-1 encoder); and what its caller evaluates, beside them.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from robopolicy.errors import ConfigError

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
            progress: bool = True) -> Path:
    """``run``/policy: ``cfg`` trained on ``store`` (or on an embedding cache); continued from its last
    checkpoint, skipped once done. Done with another config, or on other data (episodes added to the store,
    a cache of another encoder), it is refused: the figures would stand on something else."""
    from omegaconf import OmegaConf

    from robopolicy.train.trainer import train

    run = Path(run)
    wanted = json.loads(json.dumps(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)))  # as stored
    data = _data_identity(store, embeddings)
    marker = done(run, "policy/model.safetensors")
    if marker is None and _finished(run, cfg.train.steps):  # stopped between training's end and its marker
        marker = {"wall_s": None, "config": wanted, "data": data}
        _mark(run, **marker)
    if marker is not None:
        changed = _differences(marker.get("config", {}), wanted)
        if changed or marker.get("data", data) != data:
            what = f"another config (it differs in {', '.join(sorted(changed)[:6])})" if changed else \
                f"other data than {store or embeddings} holds now"
            raise ConfigError(f"{run} was trained with {what}; delete it to retrain, or choose another folder")
        return run / "policy"
    resume = (run / "train_state.pt").exists()
    if not resume and run.exists():
        shutil.rmtree(run)  # stopped before its first checkpoint: nothing there to keep
    rollouts = None
    if cfg.eval.every > 0:  # rollouts during training, as `robopolicy train` does them
        from robopolicy.eval.training import PeriodicRollouts

        rollouts = PeriodicRollouts(cfg)
    t0 = time.time()
    train(cfg, store, run, resume=resume, progress=progress, embeddings=embeddings, rollouts=rollouts)
    _mark(run, wall_s=time.time() - t0, steps=cfg.train.steps, config=wanted, data=data)
    return run / "policy"


def _data_identity(store, embeddings) -> dict:
    """What a training run read: the store's episode boundaries, or the cache's encoder and source."""
    from robopolicy.data.store import DemoStore
    from robopolicy.embeddings import cache_info, store_fingerprint

    if embeddings is not None:
        with DemoStore.open(embeddings) as cache:
            info = cache_info(cache)
            return {"cache": info.encoder_hash, "source": info.source_fingerprint}
    with DemoStore.open(store) as s:
        return {"store": store_fingerprint(s)}


def _finished(run: Path, steps: int) -> bool:
    """A run whose log reached its last step or its time budget, with a policy written."""
    log = run / "log.jsonl"
    if not log.exists() or not (run / "policy" / "model.safetensors").exists():
        return False
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return any(row.get("stopped") for row in rows) or max((row.get("step", 0) for row in rows), default=0) >= steps


def _differences(a, b, prefix: str = "") -> list[str]:
    """The dotted keys where two config dicts differ; a key one of them lacks is not a difference (a field the
    config gained since, at its default)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in a.keys() & b.keys() for d in _differences(a[k], b[k], f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def cached(policy: str | Path, store: str | Path, folder: str | Path, progress: bool = True) -> Path:
    """``folder``/embeddings.zarr: every frame of ``store`` embedded by ``policy``'s encoder (continued when
    interrupted). A cache of another checkpoint or store is refused."""
    from robopolicy.checkpoints import checkpoint_hash
    from robopolicy.embeddings import write_cache

    folder = Path(folder)
    made_by = {"checkpoint": checkpoint_hash(policy), "data": _data_identity(store, None)}
    marker = done(folder, "embeddings.zarr")
    if marker is not None and marker.get("made_by", made_by) != made_by:
        raise ConfigError(f"{folder} holds the embeddings of another stage-1 policy or store; delete it (and the "
                          "stage 2 trained on it) to remake them")
    if marker is None:
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        write_cache(policy, store, folder / "embeddings.zarr", progress=progress)
        _mark(folder, wall_s=time.time() - t0, made_by=made_by)
    return folder / "embeddings.zarr"


def policy(cfg, run: str | Path, store: str | Path, stage2=None, progress: bool = True) -> Path:
    """The recipe on ``store``: ``cfg`` trained end to end (RUN/train), or with a ``stage2`` config, stage 1
    (``cfg``) -> its embedding cache -> stage 2 on the cache; returns the policy folder, which acts on raw
    observations (a stage-2 policy through the frozen stage-1 encoder)."""
    run = Path(run)
    if stage2 is None:
        return trained(cfg, run / "train", store, progress=progress)
    first = trained(cfg, run / "stage1", store, progress=progress)
    cache = cached(first, store, run / "cache", progress=progress)
    return trained(stage2, run / "stage2", embeddings=cache, progress=progress)


def wall(run: str | Path) -> dict | None:
    """Training wall-clock of a run, summed over its steps: {"s": total} and, for a staged run, its parts
    (stage1, cache, stage2); None while a step is unfinished."""
    run = Path(run)
    if not (run / "stage1").is_dir():
        marker = done(run / "train", "policy")
        return None if marker is None or marker["wall_s"] is None else {"s": marker["wall_s"]}
    parts = {"stage1": done(run / "stage1", "policy"), "cache": done(run / "cache", "embeddings.zarr"),
             "stage2": done(run / "stage2", "policy")}
    if None in parts.values():
        return None
    parts = {k: v["wall_s"] for k, v in parts.items()}
    return {"s": sum(parts.values()), **parts}


def evaluated(plan, out: str | Path, workers: int = 1, progress: bool = True) -> Path:
    """``plan`` (eval/runner.Plan) evaluated into ``out``, continued from its records, skipped once done (an
    evaluation of another plan there is refused by the runner, naming what differs)."""
    from dataclasses import asdict

    from robopolicy.checkpoints import checkpoint_hash
    from robopolicy.eval.runner import evaluate

    out = Path(out)
    what = {"suite": plan.suite.fingerprint(), "acting": asdict(plan.acting), "shard": list(plan.shard),
            "checkpoints": {t: checkpoint_hash(p) for t, p in plan.checkpoints.items()}}
    marker = done(out, "episodes.jsonl")
    if marker is None or marker.get("plan") != what:
        t0 = time.time()
        evaluate(plan, out, workers=workers, progress=progress)
        _mark(out, wall_s=time.time() - t0, plan=what)
    return out
