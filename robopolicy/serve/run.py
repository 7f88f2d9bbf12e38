"""``robopolicy run``: episodes of a served policy on an arm, and the run report.

The report (``run.json``, ``episodes.jsonl``, ``report.md``, ``timing.png``): success, the tick lateness
histogram (period jitter), round-trip percentiles, misses (ticks more than half a period late), starved
ticks, dropped actions, the verifier's scores over time, how each episode ended, and videos.
"""
from __future__ import annotations

import gc
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def make_arm(robot: str, clock, metadata: dict, ttl_s: float):
    """``sim:<task>``: the task of envs/ behind the driver interface, with the shield around it."""
    from robopolicy.robots.shield import SafetyShield
    from robopolicy.robots.sim import SimArm

    kind, _, task = robot.partition(":")
    if kind != "sim" or not task:
        raise ConfigError(f"--robot {robot!r}: use sim:<task> (real arms come with their adapters)")
    obs = "image" if any(k.endswith("_image") for k in metadata["obs_keys"]) else "state"
    spec = None
    card_task = metadata.get("task")
    if card_task == task and metadata.get("env_spec"):
        spec = metadata["env_spec"]
    driver = SimArm(task, clock, obs=obs, env_spec=spec)
    return SafetyShield(driver, clock, ttl_ns=int(ttl_s * 1e9))


def run(link, robot: str, seeds: list[int], cfg: LoopConfig, lockstep: bool = False, out: str | Path | None = None,
        progress: bool = True, videos: int = 0) -> RunResult:
    """Episodes on ``seeds`` until one ends early; with ``out``, the report there, and mp4s of the first
    ``videos`` episodes, rendered after the run by replaying what physics was stepped with (rendering
    during the run would cost the loop its rate)."""
    from tqdm import tqdm

    from robopolicy.serve.clock import LockstepClock, WallClock

    clock = LockstepClock() if lockstep else WallClock()
    arm = make_arm(robot, clock, link.metadata, cfg.ttl_s)
    loop = ControlLoop(arm, link, clock, cfg)
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
        write_report(result, link.metadata, cfg, robot, lockstep, time.time() - t0, clips)
    return result


def render_videos(out: Path, spec: dict | None, episodes: list[RunEpisode]) -> list[str]:
    from robopolicy.video import replay_frames, write_mp4

    clips = []
    for ep in episodes:
        path = out / "actions" / f"{ep.seed}.npy"
        if spec is None or not path.is_file():
            continue
        (out / "videos").mkdir(exist_ok=True)
        name = f"{ep.seed}-{'success' if ep.success else 'failure'}.mp4"
        write_mp4(replay_frames(spec, ep.seed, np.load(path, allow_pickle=False)), out / "videos" / name)
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
        "starved": int(sum(e.starved for e in episodes)), "dropped": int(sum(e.dropped for e in episodes)),
        "late_replies": int(sum(e.late_replies for e in episodes)),
        "lateness_ms": {"p50": pct(lateness, 50), "p99": pct(lateness, 99), "max": pct(lateness, 100)},
        "round_trip_ms": {"p50": pct(trips, 50), "p90": pct(trips, 90), "p99": pct(trips, 99)},
        "ended": {k: sum(e.ended == k for e in episodes) for k in sorted({e.ended for e in episodes})},
    }


def write_report(result: RunResult, metadata: dict, cfg: LoopConfig, robot: str, lockstep: bool, wall_s: float,
                 clips: list[str] = ()):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, eps = result.out, result.episodes
    period_ms = 1000 / metadata["control_hz"]
    s = summary(eps, period_ms)
    meta = {"robot": robot, "clock": "lockstep" if lockstep else "wall", "loop": vars(cfg),
            "policy": {k: metadata.get(k) for k in ("head", "task", "checkpoint", "control_hz", "n_obs",
                                                     "n_action_steps")},
            "machine": f"{platform.machine()}, {platform.node()}", "wall_s": wall_s, "summary": s,
            "stopped": result.stopped}
    (out / "run.json").write_text(json.dumps(meta, indent=1))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    lateness = np.concatenate([e.lateness_ms for e in eps if e.lateness_ms] or [np.zeros(1)])
    axes[0].hist(lateness, bins=60, color="tab:blue")
    axes[0].axvline(period_ms / 2, color="tab:red", ls="--", label="miss (half a period)")
    axes[0].set(xlabel="tick wake-up - deadline (ms)", ylabel="ticks", title="period jitter", yscale="log")
    axes[0].legend(fontsize=7)
    trips = np.concatenate([e.round_trip_ms for e in eps if e.round_trip_ms] or [np.zeros(1)])
    axes[1].hist(trips, bins=40, color="tab:green")
    axes[1].set(xlabel="round trip (ms)", ylabel="chunks", title="request -> reply")
    for e in eps[:8]:
        best = [min(x) for x in e.scores if x]
        if best:
            axes[2].plot(best, lw=0.8)
    axes[2].set(xlabel="chunk", ylabel="chosen candidate's score", title="verifier scores (lower is better)")
    fig.tight_layout()
    fig.savefig(out / "timing.png", dpi=110)
    plt.close(fig)
    rt, lt = s["round_trip_ms"], s["lateness_ms"]

    def fmt(x):
        return "-" if x is None else f"{x:.2f}"
    latency = f", injected latency {cfg.inject_latency_s * 1000:g} ms" if cfg.inject_latency_s else ""
    lines = [f"# robopolicy run: {metadata.get('head')} on {robot}", "",
             f"{s['episodes']} episodes, {s['ticks']} ticks at {metadata['control_hz']:g} Hz ({meta['clock']} clock, "
             f"strategy {cfg.strategy}, K={cfg.k}{latency}).",
             "", "| success | misses | miss rate | starved ticks | dropped actions | late replies |",
             "|---|---|---|---|---|---|",
             f"| {s['success_rate']:.2f} | {s['misses']} | {s['miss_rate']:.2%} | {s['starved']} | {s['dropped']} | "
             f"{s['late_replies']} |", "",
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
