"""`robopolicy eval`: a suite's episodes on worker processes, recorded as they finish, resumable.

Output folder:
  run.json          what was evaluated: checkpoint hashes, suite, K, shard, seeds kind, versions, machine
  episodes.jsonl    one JSON record per finished episode (task, seed, success, length, executed-actions
                    hash, time to success, per-chunk latency and scores); appended and flushed as each ends
  actions/<task>/<seed>.npy   the executed actions (np.save, no pickle): videos are rendered from them
  summary.json, report.md, success.png, scores.png, videos/   (eval/report.py)

Honest counting: only finished episodes are recorded, so an interrupted run resumes where it stopped and
counts nothing twice or half; an episode whose worker died is retried once on a fresh worker, then
recorded as a failure with its error. Resuming or merging refuses a different checkpoint, K or suite.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from robopolicy.acting import Acting
from robopolicy.checkpoints import checkpoint_folder, checkpoint_hash, find_checkpoint
from robopolicy.errors import ConfigError
from robopolicy.eval.suite import Suite

RECORDS = "episodes.jsonl"


def env_spec_for(policy, task: str, obs: str) -> dict:
    """The env a task is evaluated in: the checkpoint's own training env when it names this task (its
    image size, a robomimic file's env_args), else the task with the suite's observations."""
    from robopolicy import envs

    card = policy.task or {}
    spec = card.get("env_spec")
    if spec and card.get("task") == task:
        spec = dict(spec)
        if spec.get("type") == "robomimic":
            kwargs = dict(spec["env_args"].get("env_kwargs", {}))
            kwargs["use_camera_obs"] = obs == "image"
            spec["env_args"] = {**spec["env_args"], "env_kwargs": kwargs}
        else:
            spec["obs"] = obs
        return spec
    image_keys = [k for k in policy.obs_keys if policy.schema[k].is_image]
    size = policy.schema[image_keys[0]].shape[0] if image_keys else None
    return envs.env_spec(task, obs, size)


def check_fits(policy, task: str, shapes: dict) -> None:
    """One clear error before any rollout when the task does not produce what the checkpoint reads."""
    problems = []
    for key in policy.obs_keys:
        if key not in shapes:
            problems.append(f"observation {key!r} is missing (the env gives {sorted(shapes)})")
        elif tuple(shapes[key][0]) != tuple(policy.schema[key].shape):
            problems.append(f"observation {key!r} is {tuple(shapes[key][0])}, the checkpoint reads "
                            f"{tuple(policy.schema[key].shape)}")
    from robopolicy import envs

    factory = envs.get(task).factory
    if factory.action_dim != policy.action_dim:
        problems.append(f"the task takes {factory.action_dim}-d actions, the checkpoint outputs {policy.action_dim}")
    semantics = (policy.task or {}).get("action_semantics")
    if semantics and list(semantics) != list(factory.action_semantics):
        problems.append(f"action semantics differ: the checkpoint drives {semantics}, the task takes "
                        f"{list(factory.action_semantics)}")
    if problems:
        raise ConfigError(f"the checkpoint does not fit task {task!r}: " + "; ".join(problems)
                          + ". Evaluate it on the task and observations it was trained on")


@dataclass
class Plan:
    """What one `robopolicy eval` run evaluates."""

    suite: Suite
    checkpoints: dict[str, Path]  # task -> checkpoint folder
    acting: Acting = Acting()  # how the policy acts (K, the score acted on, inpainting): as a server would
    shard: tuple[int, int] = (0, 1)

    def seeds(self, task: str) -> list[int]:
        i, n = self.shard
        return self.suite.seed_list(task)[i::n]


def resolve_checkpoints(suite: Suite, checkpoint: str | None, checkpoints: str | None) -> dict[str, Path]:
    """--checkpoint C for a one-task suite (or every task), --checkpoints DIR for DIR/<task>/[policy]."""
    out = {}
    if checkpoints:
        if not Path(checkpoints).is_dir():
            raise ConfigError(f"{checkpoints}: does not exist; pass a folder holding one run per suite task "
                              "(DIR/<task>/)")
        for task in suite.tasks:
            found = checkpoint_folder(Path(checkpoints) / task)
            if found is None:
                raise ConfigError(f"no checkpoint for task {task!r} of suite {suite.name}: expected "
                                  f"{Path(checkpoints) / task}/policy (a run folder) or a policy folder there")
            out[task] = found
    elif checkpoint:
        found = find_checkpoint(checkpoint)
        out = {task: found for task in suite.tasks}
    else:
        raise ConfigError("nothing to evaluate: pass --checkpoint C (one policy) or --checkpoints DIR "
                          "(DIR/<task>/ for each task of the suite)")
    return out


def checkpoint_suite(source: str | Path, task: str | None = None, obs: str | None = None, **overrides) -> Suite:
    """A one-task suite for a checkpoint: the task it was trained on and the observations it reads, unless
    given (its task.json says where it was trained)."""
    from robopolicy.eval.suite import task_suite
    from robopolicy.policy import Policy

    if task is None or obs is None:
        policy = Policy.load(find_checkpoint(source))
        task = task or (policy.task or {}).get("task")
        if task is None:
            raise ConfigError(f"{source} does not say which task it was trained on (its store named no env): "
                              "pass --task T")
        obs = obs or policy.observations
    return task_suite(task, obs, **overrides)


def run_meta(plan: Plan, hashes: dict[str, str], act_batch: int, specs: dict[str, dict]) -> dict:
    from robopolicy import provenance

    return {"env_specs": specs, "suite": plan.suite.name, "suite_fingerprint": plan.suite.fingerprint(),
            "suite_body": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(plan.suite).items()},
            "seeds_kind": plan.suite.seeds, **asdict(plan.acting), "act_batch": act_batch, "shard": list(plan.shard),
            "checkpoints": {t: str(p) for t, p in plan.checkpoints.items()}, "checkpoint_hashes": hashes,
            "weights": "the final EMA weights of each run (policy/), never the best of several checkpoints",
            "versions": provenance.versions(), "machine": provenance.machine(node=True)}


COMPARABLE = ("suite_fingerprint", "seeds_kind", "act_batch", "checkpoint_hashes", *(f.name for f in fields(Acting)))


def comparable(a: dict, b: dict) -> list[str]:
    """The fields on which two runs differ that make their episodes incomparable."""
    missing = asdict(Acting())  # runs made before an acting option was recorded ran with its default
    return [f for f in COMPARABLE if a.get(f, missing.get(f)) != b.get(f, missing.get(f))]


def read_records(folder: Path) -> list[dict]:
    """Every complete record (a line cut by a kill mid-write is not one)."""
    path = folder / RECORDS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _drop_cut_record(path: Path) -> None:
    """A run killed mid-write leaves a last line without its newline: cut it off, or the next record would
    be appended to it."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def evaluate(plan: Plan, out: str | Path, workers: int = 1, device: str = "auto", progress: bool = True,
             save_rollouts: str | Path | None = None, make_env=None, act_batch: int | None = None) -> Path:
    """Run (or resume) the plan into ``out``; returns ``out``. ``make_env(spec)`` builds an env (default:
    ``envs.make_from_spec``; must be importable, it runs in the workers)."""
    from tqdm import tqdm

    from robopolicy import envs
    from robopolicy.device import choose as choose_device
    from robopolicy.policy import ACT_BATCH, Policy

    out = Path(out)
    make_env = make_env or envs.make_from_spec
    act_batch = act_batch or ACT_BATCH
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    policies = {t: Policy.load(p, map_location=str(choose_device(device))) for t, p in plan.checkpoints.items()}
    hashes = {t: checkpoint_hash(p) for t, p in plan.checkpoints.items()}
    specs = {t: env_spec_for(policies[t], t, plan.suite.obs) for t in plan.suite.tasks}
    # every check before any rollout: a bad checkpoint for the 5th task of a suite fails now, not in an hour
    for task, policy in policies.items():
        trained = (policy.task or {}).get("task")
        if trained and trained != task:
            raise ConfigError(f"{plan.checkpoints[task]} was trained on {trained!r}, not {task!r}: pass one "
                              "checkpoint per task with --checkpoints DIR (DIR/<task>/policy)")
        future = policy.cfg.data.horizon - policy.cfg.data.n_obs + 1
        if plan.suite.execute and plan.suite.execute > future:
            raise ConfigError(f"suite {plan.suite.name}: execute={plan.suite.execute} exceeds the {task} "
                              f"checkpoint's planned future ({future} actions)")
        check_fits(policy, task, _observation_shapes(make_env, specs[task], task))
    meta = run_meta(plan, hashes, act_batch, specs)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "run.json").exists():
        before = json.loads((out / "run.json").read_text())
        differ = comparable(before, meta) + (["shard"] if before.get("shard") != meta["shard"] else [])
        if differ:
            raise ConfigError(f"{out} holds an evaluation with a different {', '.join(differ)}; resume with the "
                              "same checkpoint, suite, --samples and --shard, or choose another --out")
    else:
        (out / "run.json").write_text(json.dumps(meta, indent=1))
    _drop_cut_record(out / RECORDS)
    done = {(r["task"], r["seed"]) for r in read_records(out)}
    todo = {t: [s for s in plan.seeds(t) if (t, s) not in done] for t in plan.suite.tasks}
    total = sum(len(plan.seeds(t)) for t in plan.suite.tasks)
    records = (out / RECORDS).open("a")
    store = _RolloutStore(save_rollouts, plan.suite.tasks, specs) if save_rollouts else None
    label = "" if plan.suite.seeds == "evaluation" else " [COLLECTION seeds: train-init diagnostic]"
    bar = tqdm(total=total, initial=len(done), desc=f"eval {plan.suite.name}{label}", unit="ep",
               disable=not progress)
    counts = {"won": sum(r["success"] for r in read_records(out))}

    def on_episode(task: str, spec: dict, episode) -> None:
        row = {"task": task, **episode.record(), "seeds_kind": plan.suite.seeds}
        if episode.actions is not None:
            folder = out / "actions" / task
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"{episode.seed}.npy", episode.actions, allow_pickle=False)
        records.write(json.dumps(row) + "\n")
        records.flush()
        os.fsync(records.fileno())  # the record is the commit: from here on, the episode counts
        if store is not None and episode.error is None:
            store.append(task, episode)  # after the commit; a resumed run skips seeds the store holds
        counts["won"] += bool(episode.success)
        bar.update(1)
        bar.set_postfix(task=task, success=f"{counts['won'] / max(bar.n, 1):.2f}")

    try:
        for task in plan.suite.tasks:
            if todo[task]:
                _run_task(plan, task, policies[task], specs[task], todo[task], workers, make_env,
                          lambda episode, task=task: on_episode(task, specs[task], episode))
    finally:
        bar.close()
        records.close()
        if store is not None:
            store.close()
    return out


def _run_task(plan: Plan, task: str, policy, spec: dict, seeds: list[int], workers: int, make_env, on_episode):
    from robopolicy.eval.rollout import EnvDied, run_episodes
    from robopolicy.eval.workers import WorkerEnv

    slots: list = []

    def start():
        try:
            return WorkerEnv(make_env, (spec,), plan.suite.max_steps)
        except EnvDied as e:
            raise ConfigError(f"task {task!r}: an env worker cannot start ({e}); the episodes recorded so far "
                              "stand, rerun the same command to continue") from None

    def restart(i: int):
        slots[i].close()
        slots[i] = start()
        return slots[i]

    try:
        for _ in range(min(workers, len(seeds))):
            slots.append(start())
        run_episodes(policy, slots, seeds, acting=plan.acting, on_episode=on_episode, keep=True, restart=restart,
                     execute=plan.suite.execute)
    finally:
        for slot in slots:
            slot.close()


def _observation_shapes(make_env, spec: dict, task: str) -> dict:
    """What the task's env observes, from a worker that builds it (and is closed again)."""
    from robopolicy.eval.rollout import EnvDied
    from robopolicy.eval.workers import WorkerEnv

    try:
        worker = WorkerEnv(make_env, (spec,))
    except EnvDied as e:
        raise ConfigError(f"task {task!r} (env spec {spec}) cannot be built: {e}") from None
    worker.close()
    return worker.observation_shapes


class _RolloutStore:
    """--save-rollouts: finished episodes as demo stores (observations, executed actions, success and seed
    per frame), for failure analysis or retraining on corrections: STORE itself for a one-task suite,
    STORE/<task>.zarr for each task of a larger one, each with its task's env spec."""

    def __init__(self, path, tasks, specs: dict[str, dict]):
        from robopolicy.data.store import DemoStore

        self.stores, self.seeds = {}, {}
        for task in tasks:
            where = Path(path) if len(tasks) == 1 else Path(path) / f"{task}.zarr"
            if where.exists():
                store = DemoStore.open(where, mode="a")
                if store.env_spec != specs[task]:
                    store.close()
                    raise ConfigError(f"{where} holds episodes of another env ({store.env_spec}); pass a new "
                                      "--save-rollouts path")
                self.seeds[task] = set(store.load(["seed"])["seed"].tolist()) if store.n_episodes else set()
            else:
                where.parent.mkdir(parents=True, exist_ok=True)
                store, self.seeds[task] = DemoStore.create(where, env_spec=specs[task]), set()
            self.stores[task] = store

    def append(self, task: str, episode) -> None:
        if episode.seed in self.seeds[task]:  # stored before an interruption cut the run
            return
        n = episode.length
        frames = {k: np.stack([o[k] for o in episode.observations]) for k in episode.observations[0]}
        step = np.arange(n)
        success = np.zeros(n, bool) if episode.success_step is None else step >= episode.success_step - 1
        self.stores[task].append_episode({**frames, "action": episode.actions.astype(np.float32),
                                          "success": success, "seed": np.full(n, episode.seed, np.int64)})
        self.seeds[task].add(episode.seed)

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
