"""``robopolicy run``: episodes of a served policy on an arm, and the run report.

The report (``run.json``, ``episodes.jsonl``, ``report.md``, ``timing.png``): success, the tick lateness
histogram (period jitter), round-trip percentiles, misses (ticks more than half a period late), starved
ticks, dropped actions, the verifier's scores over time, how each episode ended, and videos.
"""
from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from robopolicy import provenance
from robopolicy.errors import ConfigError
from robopolicy.serve.loop import ControlLoop, LoopConfig, RunEpisode

EXIT_STOPPED = 3  # the arm was stopped (server lost, TTL expired, missed deadlines): the run ended early


@dataclass
class RunResult:
    episodes: list[RunEpisode]
    out: Path | None
    stopped: str | None  # why the run ended early, if it did

    @property
    def exit_code(self) -> int:
        return EXIT_STOPPED if self.stopped else 0


def make_arm(robot: str, clock, metadata: dict, ttl_s: float, max_step: float | list[float] | None = None):
    """``sim:<task>``: the task of envs/ behind the driver interface, with the shield around it. The shield's
    per-tick step is the driver's own (the task's, from its action scale) unless ``max_step`` overrides it."""
    from robopolicy import envs
    from robopolicy.robots.shield import SafetyShield
    from robopolicy.robots.sim import SimArm

    kind, _, task = robot.partition(":")
    if kind != "sim" or not task:
        raise ConfigError(f"--robot {robot!r}: use sim:<task> (real arms come with their adapters)")
    if task not in envs.TASKS:
        raise ConfigError(f"--robot {robot!r}: no task {task!r}; `robopolicy tasks` lists them")
    card_task = metadata.get("task")
    if card_task and card_task != task:  # as eval refuses: a reach policy on cue-reach fails on its first tick
        raise ConfigError(f"the served policy was trained on {card_task!r}, the robot is sim:{task}: run it with "
                          f"--robot sim:{card_task}, or serve a policy trained on {task!r}")
    obs = "image" if any(k.endswith("_image") for k in metadata["obs_keys"]) else "state"
    spec = metadata["env_spec"] if card_task == task and metadata.get("env_spec") else None
    driver = SimArm(task, clock, obs=obs, env_spec=spec)
    try:
        return SafetyShield(driver, clock, max_step=max_step, ttl_ns=int(ttl_s * 1e9))
    except ValueError as e:
        driver.close()
        raise ConfigError(f"--max-step: {e}") from None


def run(link, robot: str, seeds: list[int], cfg: LoopConfig, lockstep: bool = False, out: str | Path | None = None,
        progress: bool = True, videos: int = 0, max_step: float | list[float] | None = None) -> RunResult:
    """Episodes on ``seeds`` until one ends early; with ``out``, the report there, and mp4s of the first
    ``videos`` episodes, rendered after the run by replaying what physics was stepped with (rendering
    during the run would cost the loop its rate)."""
    from tqdm import tqdm

    from robopolicy.serve.clock import LockstepClock, WallClock

    clock = LockstepClock() if lockstep else WallClock()
    arm = make_arm(robot, clock, link.metadata, cfg.ttl_s, max_step)
    try:  # every check before the first tick and before any report file: a misfit fails here, in one line
        loop = ControlLoop(arm, link, clock, cfg)
        if loop.mail.measures_latency:  # the wall clock: time the policy before the first tick
            loop.warm_up()
    except BaseException:
        arm.close()
        raise
    out = Path(out) if out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        records = (out / "episodes.jsonl").open("w")
    episodes, stopped, t0 = [], None, time.time()
    bar = tqdm(seeds, desc=f"run {robot}", unit="ep", disable=not progress)
    try:
        for seed in bar:
            gc.collect()  # between episodes, so that no collection pauses a tick within one
            gc.disable()
            try:
                ep = loop.run_episode(seed)
            finally:
                gc.enable()
            episodes.append(ep)
            if out and len(episodes) <= videos and getattr(arm.driver, "executed", None):
                (out / "actions").mkdir(exist_ok=True)
                np.save(out / "actions" / f"{seed}.npy", np.stack(arm.driver.executed), allow_pickle=False)
            if out:
                records.write(json.dumps(ep.record()) + "\n")
                records.flush()
            bar.set_postfix(success=f"{np.mean([e.success for e in episodes]):.2f}", misses=sum(e.misses
                                                                                              for e in episodes))
            if ep.ended != "done":
                stopped = ep.ended
                break
    finally:
        bar.close()
        arm.close()
        if out:
            records.close()
    result = RunResult(episodes, out, stopped)
    if out:
        clips = render_videos(out, getattr(arm.driver, "spec", None), episodes[:videos]) if videos else []
        write_report(result, link.metadata, cfg, robot, lockstep, time.time() - t0, clips, arm.max_step.tolist())
    return result


def render_videos(out: Path, spec: dict | None, episodes: list[RunEpisode]) -> list[str]:
    from robopolicy.video import control_hz, replay_frames, write_mp4

    clips = []
    for ep in episodes:
        path = out / "actions" / f"{ep.seed}.npy"
        if spec is None or not path.is_file():
            continue
        (out / "videos").mkdir(exist_ok=True)
        name = f"{ep.seed}-{'success' if ep.success else 'failure'}.mp4"
        write_mp4(replay_frames(spec, ep.seed, np.load(path, allow_pickle=False)), out / "videos" / name,
                  fps=control_hz(spec))
        clips.append(f"videos/{name}")
    return clips


def summary(episodes: list[RunEpisode], period_ms: float) -> dict:
    lateness = np.concatenate([e.lateness_ms for e in episodes if e.lateness_ms] or [np.zeros(0)])
    trips = np.concatenate([e.round_trip_ms for e in episodes if e.round_trip_ms] or [np.zeros(0)])
    ticks = max(len(lateness), 1)

    def pct(x, q):
        return float(np.percentile(x, q)) if len(x) else None
    return {
        "episodes": len(episodes), "success_rate": float(np.mean([e.success for e in episodes])) if episodes else 0.0,
        "ticks": int(len(lateness)), "period_ms": period_ms,
        "misses": int(sum(e.misses for e in episodes)), "miss_rate": sum(e.misses for e in episodes) / ticks,
        "late": int(sum(e.late for e in episodes)),
        "starved": int(sum(e.starved for e in episodes)), "dropped": int(sum(e.dropped for e in episodes)),
        "shield": {k: int(sum(e.shield.get(k, 0) for e in episodes)) for k in ("clamped", "rejected", "workspace",
                                                                                "holds")},
        "late_replies": int(sum(e.late_replies for e in episodes)),
        "lateness_ms": {"p50": pct(lateness, 50), "p99": pct(lateness, 99), "max": pct(lateness, 100)},
        "round_trip_ms": {"p50": pct(trips, 50), "p90": pct(trips, 90), "p99": pct(trips, 99)},
        "ended": {k: sum(e.ended == k for e in episodes) for k in sorted({e.ended for e in episodes})},
    }


def fmt_step(step: list[float] | None) -> str:
    return "-" if step is None else "[" + ", ".join(f"{x:g}" for x in step) + "]"


def timing_figure(eps: list[RunEpisode], period_ms: float, chunk_ms: float, lockstep: bool, cfg: LoopConfig,
                  path: Path) -> None:
    """Period jitter, round trips, and the verifier's scores (or, without a verifier, round trips over time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    lateness = np.concatenate([e.lateness_ms for e in eps if e.lateness_ms] or [np.zeros(0)])
    ax = axes[0]
    if lockstep or not len(lateness):
        ax.text(0.5, 0.5, "lockstep clock: ticks are exact\n(no jitter to show)", ha="center", va="center",
                transform=ax.transAxes)
        ax.axis("off")
    else:
        ax.hist(lateness, bins=60, color="tab:blue")  # its own range: the miss line must not squash it
        miss = period_ms / 2
        if miss <= lateness.max():
            ax.axvline(miss, color="tab:red", ls="--", label=f"miss: {miss:g} ms late")
            ax.legend(fontsize=7)
        else:
            ax.text(0.97, 0.95, f"all ticks < the miss line ({miss:g} ms)", ha="right", va="top", fontsize=7,
                    transform=ax.transAxes)
        ax.set(yscale="log")
    ax.set(xlabel="tick wake-up - deadline (ms)", ylabel="ticks", title="period jitter")
    trips = np.concatenate([e.round_trip_ms for e in eps if e.round_trip_ms] or [np.zeros(0)])
    ax = axes[1]
    if len(trips):
        ax.hist(trips, bins=40, color="tab:green")
        ax.axvline(chunk_ms, color="tab:red", ls="--", label=f"the chunk's span ({chunk_ms:g} ms)")
        ax.legend(fontsize=7)
        ax.set(xlabel="round trip (ms)", ylabel="chunks", title="request -> reply")
    else:
        ax.text(0.5, 0.5, f"lockstep clock: each reply arrives\n{cfg.inject_latency_s * 1000:g} ms (injected) after "
                "its request;\nno round trips are measured", ha="center", va="center", transform=ax.transAxes)
        ax.axis("off")
        ax.set(title="request -> reply")
    ax = axes[2]
    scored = [[min(x) for x in e.scores if x] for e in eps[:8]]
    if any(scored):
        for best in scored:
            ax.plot(best, lw=0.8)
        ax.set(xlabel="chunk", ylabel="chosen candidate's score", title="verifier scores (lower is better)")
    elif len(trips):
        for e in eps[:8]:
            ax.plot(e.round_trip_ms, lw=0.8)
        ax.axhline(chunk_ms, color="tab:red", ls="--", lw=0.8)
        ax.set(xlabel="chunk", ylabel="round trip (ms)", title=f"round trip per chunk (K={cfg.acting.k}: no verifier)")
    else:
        ax.text(0.5, 0.5, f"K={cfg.acting.k}: no verifier scores", ha="center", va="center", transform=ax.transAxes)
        ax.axis("off")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: RunResult, metadata: dict, cfg: LoopConfig, robot: str, lockstep: bool, wall_s: float,
                 clips: list[str] = (), max_step: list[float] | None = None):
    out, eps = result.out, result.episodes
    period_ms = 1000 / metadata["control_hz"]
    s = summary(eps, period_ms)
    meta = {"robot": robot, "clock": "lockstep" if lockstep else "wall", "loop": asdict(cfg), "max_step": max_step,
            "policy": {k: metadata.get(k) for k in ("head", "task", "checkpoint", "control_hz", "n_obs",
                                                     "n_action_steps")},
            "machine": provenance.machine(node=True), "wall_s": wall_s, "summary": s,
            "stopped": result.stopped}
    (out / "run.json").write_text(json.dumps(meta, indent=1))
    timing_figure(eps, period_ms, period_ms * metadata["n_action_steps"], lockstep, cfg, out / "timing.png")
    rt, lt = s["round_trip_ms"], s["lateness_ms"]

    def fmt(x):
        return "-" if x is None else f"{x:.2f}"
    latency = f", injected latency {cfg.inject_latency_s * 1000:g} ms" if cfg.inject_latency_s else ""
    lines = [f"# robopolicy run: {metadata.get('head')} on {robot}", "",
             f"{s['episodes']} episodes, {s['ticks']} ticks at {metadata['control_hz']:g} Hz ({meta['clock']} clock, "
             f"strategy {cfg.strategy}, K={cfg.acting.k}{latency}).",
             "", "| success | misses | miss rate | late ticks | starved ticks | dropped actions | late replies | "
             "clamped commands |", "|---|---|---|---|---|---|---|---|",
             f"| {s['success_rate']:.2f} | {s['misses']} | {s['miss_rate']:.2%} | {s['late']} | {s['starved']} | "
             f"{s['dropped']} | {s['late_replies']} | {s['shield']['clamped']} |", "",
             "A miss is a tick that did not command a fresh action on time: it woke more than half a period late, "
             "or no action was due (none had arrived, or it arrived stale) and the arm held. Clamped: commands the "
             f"shield changed (bounds, per-tick step {fmt_step(meta['max_step'])}).", "",
             f"Tick lateness p50 {fmt(lt['p50'])} ms, p99 {fmt(lt['p99'])} ms, max {fmt(lt['max'])} ms. "
             f"Round trip p50 {fmt(rt['p50'])} ms, p90 {fmt(rt['p90'])} ms, p99 {fmt(rt['p99'])} ms.", "",
             "Episodes ended: " + ", ".join(f"{k} {v}" for k, v in s["ended"].items()) + ".", "",
             "![timing](timing.png)", ""]
    if result.stopped:
        lines += [f"**The run stopped early: {result.stopped}.**", ""]
    if clips:
        lines += ["Videos (replayed from the executed actions after the run): " +
                  ", ".join(f"[{c.split('/')[-1]}]({c})" for c in clips), ""]
    (out / "report.md").write_text("\n".join(lines))
