"""Reports of evaluation runs: summary.json, report.md, success.png and scores.png, and mp4 videos.

``report(folders, out)`` merges one or more run folders (the shards of one suite, e.g. a SLURM array's
``--shard i/n`` outputs): they must agree on checkpoints, suite, K and seed kind; an episode recorded
twice must agree with itself (same success, same executed-actions hash), else the merge is refused.
Every number is computed from the episode records; success carries its 95% Wilson interval.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from robopolicy.errors import ConfigError
from robopolicy.eval.runner import comparable, read_records
from robopolicy.eval.stats import wilson_interval


def merged(folders: list[Path]) -> tuple[dict, list[dict]]:
    """(run meta of the first folder, every episode record of all of them, deduplicated)."""
    metas = []
    for folder in folders:
        if not (folder / "run.json").is_file():
            raise ConfigError(f"{folder}: not an evaluation folder (no run.json); pass folders `robopolicy eval` "
                              "wrote")
        metas.append(json.loads((folder / "run.json").read_text()))
    for folder, meta in zip(folders[1:], metas[1:]):
        differ = comparable(metas[0], meta)
        if differ:
            raise ConfigError(f"{folder} differs from {folders[0]} in {', '.join(differ)}: these are not shards of "
                              "one evaluation")
    episodes: dict[tuple[str, int], dict] = {}
    for folder in folders:
        for r in read_records(folder):
            key = (r["task"], r["seed"])
            if key in episodes and (episodes[key]["success"], episodes[key]["actions_hash"]) != \
                    (r["success"], r["actions_hash"]):
                raise ConfigError(f"{key[0]} seed {key[1]} was recorded twice with different results "
                                  f"({folder}): the runs are not the same evaluation")
            episodes[key] = r
    return metas[0], sorted(episodes.values(), key=lambda r: (r["task"], r["seed"]))


def percentiles(values, qs=(50, 90, 99)) -> dict[str, float]:
    if not len(values):
        return {}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


def summarize(meta: dict, records: list[dict]) -> dict:
    tasks = {}
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        wins = [r for r in rows if r["success"]]
        lo, hi = wilson_interval(len(wins), len(rows))
        expected = len(meta["suite_body"]["tasks"]) and meta["suite_body"]["episodes"]
        tasks[task] = {
            "successes": len(wins), "episodes": len(rows), "expected_episodes": expected,
            "success_rate": len(wins) / len(rows), "wilson95": [lo, hi],
            "errors": [{"seed": r["seed"], "error": r["error"]} for r in rows if r.get("error")],
            "length_mean": float(np.mean([r["length"] for r in rows])),
            "time_to_success_mean": float(np.mean([r["success_step"] for r in wins])) if wins else None,
            "latency_ms": percentiles([x for r in rows for x in r["latency_ms"]]),
            "method": next((r["method"] for r in rows if r.get("method")), None)}
    return {"suite": meta["suite"], "seeds_kind": meta["seeds_kind"], "k": meta["k"],
            "checkpoint_hashes": meta["checkpoint_hashes"], "weights": meta["weights"],
            "versions": meta["versions"], "machine": meta["machine"], "tasks": tasks}


def report(folders: list[str | Path], out: str | Path | None = None, videos: int = 0) -> Path:
    """Write summary.json, report.md and the charts for ``folders`` into ``out`` (default: the first)."""
    folders = [Path(f) for f in folders]
    out = Path(out) if out else folders[0]
    out.mkdir(parents=True, exist_ok=True)
    meta, records = merged(folders)
    if not records:
        raise ConfigError(f"{', '.join(map(str, folders))}: no finished episodes to report")
    summary = summarize(meta, records)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    charts = [name for name, fn in (("success.png", _success_chart), ("scores.png", _scores_chart))
              if fn(summary, records, out / name)]
    clips = render_videos(meta, records, folders, out / "videos", videos) if videos else []
    (out / "report.md").write_text(markdown(summary, charts, clips))
    return out


def markdown(summary: dict, charts: list[str], clips: list[str]) -> str:
    diag = summary["seeds_kind"] != "evaluation"
    lines = [f"# Evaluation: suite `{summary['suite']}`" + (" — COLLECTION seeds (train-init diagnostic)" if diag
                                                              else ""), ""]
    if diag:
        lines += ["**These episodes start from the demonstrations' own initial conditions: a diagnostic of fit, "
                  "not a success rate.**", ""]
    lines += [f"K = {summary['k']} candidate(s) per chunk. Weights: {summary['weights']}.", "",
              "| task | success | 95% Wilson | episodes | errors | mean length | steps to success | "
              "latency p50 / p90 / p99 (ms) | candidates scored by |",
              "|---|---|---|---|---|---|---|---|---|"]
    for task, t in summary["tasks"].items():
        lat = t["latency_ms"]
        tts = "-" if t["time_to_success_mean"] is None else f"{t['time_to_success_mean']:.1f}"
        missing = "" if t["episodes"] >= t["expected_episodes"] else f" (of {t['expected_episodes']})"
        lines.append(f"| {task} | {t['successes']}/{t['episodes']} = {t['success_rate']:.2f} | "
                     f"[{t['wilson95'][0]:.2f}, {t['wilson95'][1]:.2f}] | {t['episodes']}{missing} | "
                     f"{len(t['errors'])} | {t['length_mean']:.1f} | {tts} | "
                     f"{lat.get('p50', 0):.1f} / {lat.get('p90', 0):.1f} / {lat.get('p99', 0):.1f} | "
                     f"{t['method'] or '-'} |")
    errors = [(task, e) for task, t in summary["tasks"].items() for e in t["errors"]]
    if errors:
        lines += ["", "Episodes whose env worker died twice (counted as failures):", ""]
        lines += [f"- {task} seed {e['seed']}: {e['error'].splitlines()[0]}" for task, e in errors]
    lines += [""] + [f"![{c}]({c})" for c in charts]
    if clips:
        lines += ["", "Videos: " + ", ".join(f"[{Path(c).name}]({c})" for c in clips)]
    lines += ["", "Checkpoints (sha256 of weights + config + schema, first 16 hex): "
              + ", ".join(f"{t} `{h}`" for t, h in summary["checkpoint_hashes"].items()),
              "", f"Machine: {summary['machine']}. Packages: "
              + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()), ""]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _success_chart(summary: dict, records: list[dict], path: Path) -> bool:
    plt = _plt()
    tasks = list(summary["tasks"])
    rates = [summary["tasks"][t]["success_rate"] for t in tasks]
    lo = [r - summary["tasks"][t]["wilson95"][0] for t, r in zip(tasks, rates)]
    hi = [summary["tasks"][t]["wilson95"][1] - r for t, r in zip(tasks, rates)]
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(tasks) + 2), 3.2))
    ax.bar(tasks, rates, yerr=[lo, hi], capsize=4, color="#4c72b0")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (95% Wilson)")
    ax.set_title(f"suite {summary['suite']}, K={summary['k']}")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _scores_chart(summary: dict, records: list[dict], path: Path) -> bool:
    """The chosen candidate's score chunk by chunk, successes vs failures: where a policy grows unsure."""
    scored = [r for r in records if any(s is not None for s in r["scores"])]
    if not scored:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for r in scored[:40]:
        ys = [s[c] if s is not None else np.nan for s, c in zip(r["scores"], r["chosen"])]
        ax.plot(ys, color="#55a868" if r["success"] else "#c44e52", alpha=0.5, lw=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # chunks are counted: no 0.5 ticks
    ax.set_xlabel("chunk")
    ax.set_ylabel(f"score ({scored[0].get('method')})")  # short: a long label outgrew the figure's height
    ax.set_title("the executed candidate's score (lower: better); green: successes, red: failures", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def render_videos(meta: dict, records: list[dict], folders: list[Path], out: Path, per_kind: int) -> list[str]:
    """mp4s of the first ``per_kind`` successes and failures of each task, rendered afterwards by replaying
    the executed actions from the episode's seed (physics is deterministic), so the run never rendered
    frames it did not need."""
    from robopolicy.video import control_hz, replay_frames, write_mp4

    out.mkdir(parents=True, exist_ok=True)
    clips = []
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task and not r.get("error")]
        chosen = [r for r in rows if r["success"]][:per_kind] + [r for r in rows if not r["success"]][:per_kind]
        for r in chosen:
            path = next((f / "actions" / task / f"{r['seed']}.npy" for f in folders
                         if (f / "actions" / task / f"{r['seed']}.npy").is_file()), None)
            if path is None:
                continue
            actions = np.load(path, allow_pickle=False)
            frames = replay_frames(meta["env_specs"][task], r["seed"], actions)
            name = f"{task}-{r['seed']}-{'success' if r['success'] else 'failure'}.mp4"
            write_mp4(frames, out / name, fps=control_hz(meta["env_specs"][task]))  # real time
            clips.append(f"videos/{name}")
    return clips
