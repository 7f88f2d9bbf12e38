"""The episode loop: policies acting in tasks, chunk by chunk, many episodes at once.

One definition for every caller (a single rollout, ``robopolicy eval``'s workers, the history bench):
each env slot runs one episode at a time; whenever the slots need their next chunks, the policy acts
on all their windows in one batched call (``Policy.act`` gives each row what it would get alone), then
every slot executes its chunk (Ta actions, or fewer if the episode ends). Each episode's sampling noise
comes from a generator seeded by its seed, so an episode's result depends on its seed alone: not on
the number of slots, their order, or which other episodes share a batch.

Windows come from ``History`` (robopolicy/data/windows.py): the geometry training used. The previous
chunk's plan is kept there too, so a verifier can score coherence with the actions still queued.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from robopolicy.acting import Acting
from robopolicy.data.windows import History, Window, actions_hash
from robopolicy.serve.frames import FrameCache, attach_features, frame_cache


@dataclass
class Episode:
    """One finished (or failed) episode, as ``robopolicy eval`` records it."""

    seed: int
    success: bool
    length: int  # steps executed
    actions_hash: str  # sha256 of the executed actions (float32, in order): equal runs, equal hashes
    success_step: int | None = None  # the first step after which the task reported success
    latency_ms: list[float] = field(default_factory=list)  # per chunk: the policy's share of one batched call
    scores: list[list[float] | None] = field(default_factory=list)  # per chunk: the verifier's score per candidate
    chosen: list[int] = field(default_factory=list)  # per chunk: the candidate executed
    method: str | None = None  # what scored candidates ("score": the head's energy, "past", "coherence")
    outcome: dict | None = None  # the task's account of how the episode ended (info["outcome"], where it has one)
    retried: int = 0  # chunks drawn again (retry_above) ...
    refined: int = 0  # ... and chunks given more optimization steps (refine_above): the uncertainty acted on
    error: str | None = None  # the env's worker died (after one retry): counted as a failure
    actions: np.ndarray | None = None  # (length, Da) the executed actions (kept for videos and stores)
    observations: list[dict] | None = None  # the observation before each executed action (kept for stores)

    def record(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k not in ("actions", "observations")}
        out["latency_ms"] = [round(x, 3) for x in self.latency_ms]
        return out


class EnvJobs:
    """Runs an env's jobs: ``("reset", seed)`` -> the first observation; ``("chunk", actions)`` ->
    ChunkResult, cut at ``max_steps`` steps into the episode. Keeps the seconds spent in jobs and, where
    the task renders through ``_render``, in rendering (what ``robopolicy bench eval`` splits)."""

    def __init__(self, env, max_steps: int | None = None):
        self.env, self.max_steps, self.steps = env, max_steps, 0
        self.seconds = self.render_seconds = 0.0
        render = getattr(env, "_render", None)
        if render is not None:
            def timed(*a, **kw):
                t0 = time.perf_counter()
                try:
                    return render(*a, **kw)
                finally:
                    self.render_seconds += time.perf_counter() - t0
            env._render = timed  # on this instance only: a meter, not a change of behaviour

    def __call__(self, kind: str, payload):
        t0 = time.perf_counter()
        try:
            if kind == "reset":
                self.steps = 0
                obs, _ = self.env.reset(seed=int(payload))
                return obs
            if self.max_steps is not None:
                payload = payload[: max(self.max_steps - self.steps, 0)]
            result = run_chunk(self.env, payload)
            self.steps += len(result.observations)
            result.ended = result.ended or (self.max_steps is not None and self.steps >= self.max_steps)
            return result
        finally:
            self.seconds += time.perf_counter() - t0


def run_chunk(env, actions: np.ndarray) -> ChunkResult:
    """Step ``actions``, each clipped to the action space first (what the env executes; the safety shield
    clamps the same way), so the recorded executed actions are what physics was stepped with."""
    observations, executed, success_at, success, outcome = [], [], None, False, None
    space = env.action_space
    for i, action in enumerate(actions):
        action = np.clip(np.asarray(action, np.float32), space.low, space.high).astype(np.float32)
        obs, _, terminated, truncated, info = env.step(action)
        observations.append(obs)
        executed.append(action)
        success, outcome = bool(info.get("success", False)), info.get("outcome", outcome)
        if success and success_at is None:
            success_at = i
        if terminated or truncated:
            return ChunkResult(observations, True, success, success_at, executed, outcome)
    return ChunkResult(observations, False, success, success_at, executed, outcome)


class LocalEnv:
    """An env slot in this process. A slot takes a job (``submit``: a reset or a chunk to execute) and
    hands back its result (``result``); ``WorkerEnv`` (eval/workers.py) does the same in a worker
    process, so slots step their envs in parallel between two batched policy calls."""

    def __init__(self, env, max_steps: int | None = None):
        self.jobs, self._job = EnvJobs(env, max_steps), None

    def submit(self, kind: str, payload) -> None:
        self._job = (kind, payload)

    def result(self):
        job, self._job = self._job, None
        return self.jobs(*job)

    @property
    def timing(self) -> tuple[float, float]:
        return self.jobs.seconds, self.jobs.render_seconds

    def close(self) -> None:
        self.jobs.env.close()


@dataclass
class ChunkResult:
    observations: list[dict]  # after each executed action
    ended: bool  # the episode terminated or hit its time limit
    success: bool  # the task's success flag after the last step
    success_at: int | None  # index of the first action after which the task reported success
    actions: list[np.ndarray] = field(default_factory=list)  # what was executed (clipped to the action space)
    outcome: dict | None = None  # the task's info["outcome"] after the last step


@dataclass
class _Running:
    history: History
    generator: torch.Generator
    episode: Episode
    cache: FrameCache | None = None  # its frames' features (image policies): each frame encoded once


class EnvDied(RuntimeError):
    """A slot's env process died (a MuJoCo error, a segfault); the episode it ran did not finish."""


def run_episodes(policy, slots: list, seeds: Iterable[int], acting: Acting = Acting(),
                 on_episode: Callable[[Episode], None] | None = None, keep: bool = False,
                 restart: Callable[[int], object] | None = None, retries: int = 1,
                 execute: int | None = None,
                 window_of: Callable[[History, list[str]], Window] | None = None) -> list[Episode]:
    """Run one episode per seed on ``slots`` (LocalEnv or WorkerEnv), acting as ``acting`` says, ``execute``
    actions of each chunk (default: the policy's Ta). Returns the episodes in the order they finished,
    calling ``on_episode`` as each does; ``keep``: episodes keep their executed actions and observations
    (``Episode.actions``, ``Episode.observations``). A slot whose env dies
    (EnvDied) is replaced by ``restart(slot_index)`` and its episode rerun from the start, up to
    ``retries`` times; then the episode counts as a failure with an error. Without ``restart`` the
    error propagates.
    ``window_of(history, obs_keys)``: what the policy is shown of an episode (default ``History.window``); an
    experiment that shows the policy an altered history passes its own (benchmarks/noptp_stall.py)."""
    queue = [int(s) for s in seeds][::-1]  # pop() takes the next seed
    tries: dict[int, int] = {}
    running: list[_Running | None] = [None] * len(slots)
    resetting: list[int | None] = [None] * len(slots)  # the seed a slot is resetting for
    done: list[Episode] = []

    def finish(episode: Episode) -> None:
        done.append(episode)
        if on_episode:
            on_episode(episode)

    def died(i: int, seed: int, error: EnvDied) -> None:
        """Slot i's env died during ``seed``: a fresh env, and the episode again or counted as failed."""
        if restart is None:
            raise error
        slots[i] = restart(i)
        tries[seed] = tries.get(seed, 0) + 1
        if tries[seed] > retries:
            finish(Episode(seed, False, 0, "", error=f"{error} (retried {retries}x)"))
        else:
            queue.append(seed)

    def lost(i: int, error: EnvDied) -> None:
        seed = running[i].episode.seed if running[i] else resetting[i]
        running[i] = resetting[i] = None
        died(i, seed, error)

    def submit(i: int, kind: str, payload) -> bool:
        try:
            slots[i].submit(kind, payload)
            return True
        except EnvDied as e:
            lost(i, e)
            return False

    def collect(i: int):
        try:
            return slots[i].result()
        except EnvDied as e:
            lost(i, e)
            return None

    while queue or any(r is not None for r in running):
        # idle slots start their next episodes (resets run in parallel too)
        started = []
        for i in range(len(slots)):
            if running[i] is None and queue:
                resetting[i] = queue.pop()
                if submit(i, "reset", resetting[i]):
                    started.append(i)
        for i in started:
            seed, obs = resetting[i], collect(i)
            if obs is None:
                continue
            resetting[i] = None
            history = policy.history()
            history.start(obs)
            running[i] = _Running(history, torch.Generator().manual_seed(seed), Episode(seed, False, 0, ""),
                                  frame_cache(policy))
        active = [i for i in range(len(slots)) if running[i] is not None]
        if not active:
            continue
        windows = [(window_of or History.window)(running[i].history, policy.obs_keys) for i in active]
        t0 = time.perf_counter()
        if running[active[0]].cache is not None:  # a long image window re-encodes only its newest frames
            attach_features(policy, windows, [running[i].cache for i in active])
        chunks = policy.act(windows, acting, generators=[running[i].generator for i in active])
        share = (time.perf_counter() - t0) * 1000 / len(active)  # each row's share of the batched call
        todo = {i: chunk.plan[:execute] if execute else chunk.actions for i, chunk in zip(active, chunks)}
        for i, chunk in zip(active, chunks):
            episode = running[i].episode
            running[i].history.plan(chunk.plan, chunk.t)
            episode.latency_ms.append(share)
            episode.scores.append(None if chunk.scores is None else [float(x) for x in chunk.scores])
            episode.chosen.append(chunk.chosen)
            episode.method = episode.method or chunk.method
            episode.retried += int(chunk.retried > 0)
            episode.refined += int(chunk.refined)
        sent = [i for i in active if submit(i, "chunk", todo[i])]
        for i in sent:
            r = running[i]
            result = collect(i)
            if result is None:
                continue
            for action, obs in zip(result.actions, result.observations):
                r.history.record(action, obs)
            if result.success_at is not None and r.episode.success_step is None:
                r.episode.success_step = r.history.t - len(result.observations) + result.success_at + 1
            if result.ended:
                executed = np.stack(r.history.actions)
                r.episode.success, r.episode.length = result.success, len(executed)
                r.episode.outcome = result.outcome
                r.episode.actions_hash = actions_hash(executed)
                if keep:
                    r.episode.actions, r.episode.observations = executed, r.history.obs[: len(executed)]
                running[i] = None
                finish(r.episode)
    return done


def rollout(policy, env, seed: int, acting: Acting = Acting()) -> bool:
    """One episode in ``env``; ``acting.k`` > 1 samples k candidates per chunk and executes the verifier's pick."""
    return run_episodes(policy, [LocalEnv(env)], [seed], acting)[0].success


def rollouts(policy, task: str, seeds, obs: str = "state", image_size: int | None = None,
             progress: bool = False, acting: Acting = Acting()) -> list[bool]:
    """Success of one rollout per seed (sampling noise seeded by the seed, so reruns agree), in seed order."""
    from tqdm import tqdm

    from robopolicy import envs

    kwargs = {"image_size": image_size} if image_size else {}
    slot = LocalEnv(envs.make(task, obs=obs, **kwargs))
    seeds = [int(s) for s in seeds]
    bar = tqdm(total=len(seeds), desc=f"eval {task}", unit="ep", disable=not progress)
    try:
        episodes = run_episodes(policy, [slot], seeds, acting, on_episode=lambda e: bar.update(1))
    finally:
        bar.close()
        slot.close()
    won = {e.seed: e.success for e in episodes}
    return [won[s] for s in seeds]


def success_rate(policy, task: str, seeds, obs: str = "state", image_size: int | None = None,
                 acting: Acting = Acting()) -> float:
    return float(np.mean(rollouts(policy, task, seeds, obs=obs, image_size=image_size, acting=acting)))
