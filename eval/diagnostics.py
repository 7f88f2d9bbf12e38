"""What a results cell's episodes say beyond success: does the verifier's score predict failure, and how
strongly does each executed action follow from the previous one (the PTP paper's copycat measure).

Both read only what an evaluation records (``episodes.jsonl``'s per-chunk scores, ``actions/<seed>.npy``)
and a demo store, so an artifact can be re-derived from an evaluation folder without rerunning it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EARLY_CHUNKS = 8  # the per-episode score: mean over this many first scored chunks, the same for every episode


def early_score(scores: Sequence[Sequence[float] | None], chosen: Sequence[int], n: int = EARLY_CHUNKS
                ) -> float | None:
    """Mean score of the executed candidate over an episode's first ``n`` scored chunks (None: fewer).
    A fixed count, so failures' longer episodes (more chunks, more chances of a high score) do not
    inflate it; PTP's past score only starts once the history reaches back to its first frame."""
    picked = [s[c] for s, c in zip(scores, chosen) if s is not None][:n]
    return float(np.mean(picked)) if len(picked) == n else None


def auroc(scores: Sequence[float], failed: Sequence[bool]) -> float:
    """P(a failure's score > a success's score), ties counted half (Mann-Whitney); 0.5: no signal."""
    s, f = np.asarray(scores, float), np.asarray(failed, bool)
    fail, ok = s[f], s[~f]
    if not len(fail) or not len(ok):
        raise ValueError("auroc needs at least one failure and one success")
    greater = (fail[:, None] > ok[None, :]).sum() + 0.5 * (fail[:, None] == ok[None, :]).sum()
    return float(greater / (len(fail) * len(ok)))


def shuffled_auroc(scores: Sequence[float], failed: Sequence[bool], n: int = 2000, seed: int = 0
                   ) -> tuple[float, float, float]:
    """The baseline a score must beat: AUROCs with the scores shuffled across episodes. Returns the 2.5 and
    97.5 percentiles of the shuffled AUROCs and the one-sided permutation p of the observed one."""
    rng = np.random.default_rng(seed)
    observed, s = auroc(scores, failed), np.asarray(scores, float)
    shuffled = np.array([auroc(rng.permutation(s), failed) for _ in range(n)])
    lo, hi = np.percentile(shuffled, [2.5, 97.5])
    return float(lo), float(hi), float((1 + (shuffled >= observed).sum()) / (1 + n))


def action_dependency(episodes: Sequence[np.ndarray], seed: int = 0, steps: int = 300) -> float | None:
    """How well a_{t+1} is predicted from a_t alone: held-out R^2 of a small MLP (the PTP paper's
    ``mlp_correlation``), fitted on half the episodes and scored on the other half. 1: each action is
    its predecessor's function (copycat); the expert's value is the reference. None: too few episodes.
    The MLP starts by predicting the mean (R^2 0) and stops at its best loss on a quarter of the fitting
    episodes held back, so noise reads as about 0, never as an overfit negative."""
    import torch

    episodes = [np.asarray(e, np.float32) for e in episodes if len(e) > 1]
    if len(episodes) < 8:
        return None

    def pairs(part):
        x = torch.from_numpy(np.concatenate([e[:-1] for e in part]))
        return (x - mean) / std, (torch.from_numpy(np.concatenate([e[1:] for e in part])) - mean) / std

    fit, test = episodes[0::2], episodes[1::2]
    every = np.concatenate(fit)
    mean, std = torch.from_numpy(every.mean(0)), torch.from_numpy(every.std(0)).clamp_min(1e-6)
    (x, y), (xv, yv), (xt, yt) = pairs([e for i, e in enumerate(fit) if i % 4]), pairs(fit[0::4]), pairs(test)
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, d))
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            last = i >= len(list(net.parameters())) - 2
            p.copy_(torch.zeros(p.shape) if p.dim() == 1 or last else
                    torch.randn(p.shape, generator=g) * (2.0 / p.shape[-1]) ** 0.5)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    best, state = float("inf"), None
    for _ in range(steps):  # full batch: a few thousand pairs
        with torch.no_grad():
            val = float(((net(xv) - yv) ** 2).mean())
        if val < best:
            best, state = val, {k: v.clone() for k, v in net.state_dict().items()}
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    net.load_state_dict(state)
    with torch.no_grad():
        residual = ((net(xt) - yt) ** 2).sum()
        total = ((yt - yt.mean(0)) ** 2).sum()
    return float(1 - residual / total) if total > 0 else None


def failure_kinds(task: str, episodes: Sequence[dict]) -> dict[str, int] | None:
    """Failures counted by how they ended (the task's ``failure_kind`` of each recorded outcome); None when
    the task names no kinds or the episodes carry no outcomes."""
    from robopolicy import envs

    kind = getattr(envs.get(task).factory, "failure_kind", None)
    failed = [e for e in episodes if not e["success"]]
    if kind is None or not failed or any("outcome" not in e for e in failed):
        return None
    counts: dict[str, int] = {}
    for e in failed:
        k = kind(e["outcome"])
        counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def failure_distances(task: str, episodes: Sequence[dict]) -> dict[str, float]:
    """The median distance, per failure kind, between where a failed episode ended and where it went (the
    task's ``failure_distance`` of each outcome; kinds it gives no distance for are left out). It tells a
    near miss from a stop halfway."""
    from robopolicy import envs

    kind = getattr(envs.get(task).factory, "failure_kind", None)
    distance = getattr(envs.get(task).factory, "failure_distance", None)
    if kind is None or distance is None:
        return {}
    by_kind: dict[str, list[float]] = {}
    for e in (e for e in episodes if not e["success"] and "outcome" in e):
        d = distance(e["outcome"])
        if d is not None:
            by_kind.setdefault(kind(e["outcome"]), []).append(d)
    return {k: float(np.median(d)) for k, d in by_kind.items()}
