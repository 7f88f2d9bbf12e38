"""Why long context without PTP fails on cue-reach: where its episodes stop, and whether the clock its
window carries is what stops them.

    python benchmarks/noptp_stall.py OUT.json NOPTP_CHECKPOINT PTP_CHECKPOINT [--episodes 50] [--shift 12]

The results table shows that no-PTP's cue-reach failures do not forget the cue: they end nearer the cued
target, a centimetre or two outside the 5 cm success radius. This measures, on the evaluation seeds:

1. **Trajectories.** The distance from the tool centre to the cued target at every step, for the expert,
   PTP and no-PTP (``OUT.png``): who falls behind the expert's schedule, and where the policies stop.
2. **The clock test**, an experiment that can come out either way. Until step 90 a To=16, stride-6 window
   starts with copies of the episode's first frame, so it tells the policy how long the episode has run,
   and the expert's behaviour is indexed by time (it waits at READY until step 30), so a long-context
   policy has to read that clock. Hypothesis: no-PTP ties the size of its steps to the clock rather than
   to where the hand is, so an episode that falls behind the demonstrations' schedule slows down as if it
   had arrived. Test: once the hand has left READY (2 cm from where it waited), every window the policy
   is shown holds the episode as it happened except that the wait at READY is ``--shift`` frames longer
   (the clock reads later) or shorter (earlier). If the clock drives the stall, no-PTP's success falls
   with a later clock and rises with an earlier one; if it does not move, the clock is not the
   mechanism. PTP, the same architecture and data with the past supervised, is the control. The yardstick
   is a row with nothing changed but the sampling noise (another stream per episode): how many seeds a
   policy this close to the success radius flips anyway. (A later clock also lets the cue's frames leave
   the window sooner, from step 85 instead of 97, long after every episode has turned toward a target.)
3. **Probes at the same windows.** Windows taken from no-PTP's own failures that ended short of the cued
   target (approaching, step 45, and stalled, step 80) are shown to both policies with the same sampling
   noise (8 draws): the first action's component toward the cued target, against the expert's
   P-controller (10 x the offset of the hand body, the state's first three numbers, from the target,
   clipped to 1 per axis; the tool centre that success measures sits a few cm from the hand body); how
   much it changes when only the current frame's hand is moved 5 mm toward the target (the expert's: 0.05
   less where it does not clip); and how much it changes with the clock ``--shift`` later. A policy that
   reads where the hand is answers the second probe; one that reads the clock, the third.

Both policies act exactly as ``robopolicy eval`` runs them (run_episodes, noise seeded by the episode
seed), so the unshifted rows of policies retrained from the cells' recipes should repeat the committed
cells seed for seed; the artifact counts the seeds that agree (the cells' checkpoint hashes cover a config
file that has since gained a field, so they cannot be compared).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from robopolicy import provenance

LEFT_READY = 0.02  # m from the hand's position at DECIDE - 1: the hand has left READY
CELLS = {"no PTP": "cue-reach.noptp.s1", "PTP": "cue-reach.ptp.s1"}  # the results cells these policies repeat
PROBE_STEPS = {"approaching": 45, "stalled": 80}  # steps of no-PTP's failed episodes probed
PROBE_MOVE = 0.005  # m: the current frame's hand moved toward the target (well short of it at the stall)
NOISE_DRAWS = 8


def shifted_history(history, shift: int, decide: int):
    """The episode with the wait at READY ``shift`` frames longer (frame decide-1 repeated) or shorter
    (frames decide-|shift| .. decide-1 left out); the action taken at each kept frame stays with it."""
    obs, actions = history.obs, history.actions
    if shift >= 0:
        obs = obs[:decide] + [obs[decide - 1]] * shift + obs[decide:]
        actions = actions[:decide] + [actions[decide - 1]] * shift + actions[decide:]
    else:
        obs, actions = obs[: decide + shift] + obs[decide:], actions[: decide + shift] + actions[decide:]
    shown = type(history)(history.spec, history.action_dim)
    shown.obs, shown.actions = obs, actions
    return shown


def window_with_clock_shift(shift: int, decide: int):
    """``run_episodes``' ``window_of``: the real window until the hand leaves READY, then the shifted history's
    frames (the step count, plan and queue stay the real episode's)."""
    def window_of(history, keys):
        real = history.window(keys)
        if shift == 0 or history.t < decide or not _left_ready(history, decide):
            return real
        shown = shifted_history(history, shift, decide).window(keys)
        return replace(real, obs=shown.obs, actions_before_frames=shown.actions_before_frames,
                       actions_at_past_frames=shown.actions_at_past_frames)
    return window_of


def _left_ready(history, decide: int) -> bool:
    waited = history.obs[decide - 1]["state"][:3]
    return any(np.linalg.norm(o["state"][:3] - waited) > LEFT_READY for o in history.obs[decide:])


class FreshNoise:
    """The policy with each episode's sampling noise drawn from another stream (its seed + ``offset``): how
    many seeds flip when nothing but the noise changes."""

    def __init__(self, policy, offset: int = 10**6):
        self.policy, self.offset, self._streams = policy, offset, {}

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def act(self, windows, acting, generators, **kw):
        import torch

        # keyed by id, the episode's own generator kept alive beside its replacement so no id is reused
        fresh = [self._streams.setdefault(id(g), (g, torch.Generator().manual_seed(g.initial_seed() + self.offset)))[1]
                 for g in generators]
        return self.policy.act(windows, acting, generators=fresh, **kw)


class Traced:
    """A cue-reach env that keeps, per seed, the tool centre's distance to the cued target after reset and
    after every step (success is that distance under 5 cm)."""

    def __init__(self, env):
        self.env, self.traces, self._trace = env, {}, None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def _distance(self) -> float:
        task = self.env.unwrapped
        return float(np.linalg.norm(task.sim.tcp_center - task.target))

    def reset(self, seed=None, **kw):
        out = self.env.reset(seed=seed, **kw)
        self._trace = self.traces[int(seed)] = [self._distance()]
        return out

    def step(self, action):
        out = self.env.step(action)
        self._trace.append(self._distance())
        return out


def expert_traces(seeds) -> dict[int, list[float]]:
    from robopolicy import envs

    env = Traced(envs.make("cue-reach"))
    for seed in seeds:
        env.reset(seed=seed)
        expert = env.unwrapped.make_expert()
        expert.reset()
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(expert.act(env.unwrapped))
            done = terminated or truncated
    env.close()
    return env.traces


def policy_rows(policy, seeds, shift: int, decide: int, slots: int = 8):
    from robopolicy import envs
    from robopolicy.eval.rollout import LocalEnv, run_episodes

    traced = [Traced(envs.make("cue-reach")) for _ in range(slots)]
    episodes = run_episodes(policy, [LocalEnv(e) for e in traced], seeds, keep=True,
                            window_of=window_with_clock_shift(shift, decide))
    traces = {s: t for e in traced for s, t in e.traces.items()}
    for e in traced:
        e.close()
    return sorted(episodes, key=lambda e: e.seed), traces


def history_at(policy, episode, t: int):
    """The kept episode as a History at step t (observations 0..t, actions 0..t-1)."""
    history = policy.history()
    history.start(episode.observations[0])
    for i in range(t):
        history.record(episode.actions[i], episode.observations[i + 1])
    return history


def toward(policy, windows, directions) -> np.ndarray:
    """(windows,) the first action's xyz component along each direction, averaged over NOISE_DRAWS draws
    seeded alike for every call (common random numbers: differences between calls are the model's)."""
    import torch

    along = np.zeros(len(windows))
    for draw in range(NOISE_DRAWS):
        chunks = policy.act(windows, generators=[torch.Generator().manual_seed(draw) for _ in windows])
        along += [c.actions[0][:3] @ u for c, u in zip(chunks, directions)]
    return along / NOISE_DRAWS


def probes(policies: dict, episodes, targets: np.ndarray, shift: int, decide: int) -> dict:
    """At no-PTP's failed episodes' probe steps: each policy's push toward the cued target, its change when
    the current frame's hand is moved PROBE_MOVE toward it, and its change with the clock ``shift`` later."""
    reference = next(iter(policies.values()))
    out = {}
    for phase, t in PROBE_STEPS.items():
        cases = [(e, history_at(reference, e, t)) for e in episodes
                 if not e.success and e.outcome["nearer"] == e.outcome["cue"] and len(e.actions) > t]
        if not cases:
            continue
        keys = reference.obs_keys
        windows = [h.window(keys) for _, h in cases]
        hands = np.array([h.obs[-1]["state"][:3] for _, h in cases])
        goals = np.array([targets[e.outcome["cue"]] for e, _ in cases])
        u = (goals - hands) / np.linalg.norm(goals - hands, axis=1, keepdims=True)
        moved = []
        for w, step in zip(windows, u):
            state = w.obs["state"].copy()
            state[-1, :3] += PROBE_MOVE * step  # the current frame only
            moved.append(replace(w, obs={**w.obs, "state": state}))
        later = window_with_clock_shift(shift, decide)
        shifted = [later(h, keys) for _, h in cases]
        distance = np.linalg.norm(goals - hands, axis=1)
        row = {"windows": len(cases), "hand_body_to_target_median_m": float(np.median(distance)),
               "expert_push": float(np.median(np.sum(np.clip(10 * (goals - hands), -1, 1) * u, axis=1))),
               "expert_change_when_hand_moved": float(np.median(np.sum(
                   (np.clip(10 * (goals - hands - PROBE_MOVE * u), -1, 1) - np.clip(10 * (goals - hands), -1, 1))
                   * u, axis=1))), "policies": {}}
        for name, policy in policies.items():
            base = toward(policy, windows, u)
            row["policies"][name] = {
                "push_median": float(np.median(base)),
                "change_when_hand_moved_median": float(np.median(toward(policy, moved, u) - base)),
                f"change_with_clock_{shift:+d}_median": float(np.median(toward(policy, shifted, u) - base))}
        out[f"{phase} (step {t})"] = row
    return out


def step_size(actions: np.ndarray) -> float:
    """Median commanded step (norm of the xyz action) over an episode's last 20 steps."""
    return float(np.median(np.linalg.norm(actions[-20:, :3], axis=1)))


def summary(episodes, traces, radius: float) -> dict:
    failed = [e for e in episodes if not e.success]
    return {
        "successes": sum(e.success for e in episodes), "trials": len(episodes),
        "success_by_seed": {str(e.seed): bool(e.success) for e in episodes},
        "failed_final_distance_median_m": float(np.median([traces[e.seed][-1] for e in failed])) if failed else None,
        "failed_last20_step_median": float(np.median([step_size(e.actions) for e in failed])) if failed else None,
        "first_step_within_10cm": _first_within(traces, 0.10),
        "first_step_within_radius": _first_within(traces, radius),
    }


def _first_within(traces: dict[int, list[float]], d: float) -> dict:
    """The median first step within ``d`` over the episodes that got there, and how many did."""
    steps = [next((i for i, x in enumerate(t) if x < d), None) for t in traces.values()]
    reached = [s for s in steps if s is not None]
    return {"median": float(np.median(reached)) if reached else None, "episodes": len(reached)}


def profile(traces: dict[int, list[float]], length: int) -> dict:
    """Per step: median and quartiles of the distance over episodes (an ended episode holds its last)."""
    grid = np.array([t + [t[-1]] * (length - len(t)) for t in traces.values()])[:, :length]
    q = np.percentile(grid, [25, 50, 75], axis=0)
    return {"q25": q[0].round(4).tolist(), "median": q[1].round(4).tolist(), "q75": q[2].round(4).tolist()}


def figure(profiles: dict[str, dict], radius: float, decide: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, p), color in zip(profiles.items(), ["black", "tab:blue", "tab:red", "tab:orange", "tab:green"]):
        x = np.arange(len(p["median"]))
        ax.plot(x, p["median"], color=color, label=name)
        ax.fill_between(x, p["q25"], p["q75"], color=color, alpha=0.15)
    ax.axhline(radius, color="grey", ls="--", lw=1, label="success radius")
    ax.axvline(decide, color="grey", ls=":", lw=1, label="the expert leaves READY")
    ax.set_xlabel("step")
    ax.set_ylabel("tool centre to the cued target (m)")
    ax.set_title("cue-reach, evaluation seeds: median and quartiles")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    import torch

    from robopolicy import envs
    from robopolicy.checkpoints import checkpoint_hash, weights_hash
    from robopolicy.envs.memory import CueReach
    from robopolicy.eval.stats import mcnemar_exact
    from robopolicy.policy import Policy

    out, checkpoints = Path(argv[0]), {"no PTP": argv[1], "PTP": argv[2]}
    episodes = int(argv[argv.index("--episodes") + 1]) if "--episodes" in argv else 50
    shift = int(argv[argv.index("--shift") + 1]) if "--shift" in argv else 12
    decide, radius, length = CueReach.DECIDE, 0.05, CueReach.max_episode_steps + 1
    if not 0 < shift < decide - CueReach.CUE_STEPS:
        raise SystemExit(f"--shift must be in 1..{decide - CueReach.CUE_STEPS - 1} (the wait after the cue)")
    t0 = time.time()
    seeds = list(envs.eval_seeds(episodes))
    cells = Path(__file__).parent / "results" / "cells"
    experts = expert_traces(seeds)
    result = {"expert": {"successes": sum(t[-1] < radius for t in experts.values()), "trials": len(seeds),
                         "first_step_within_10cm": _first_within(experts, 0.10),
                         "first_step_within_radius": _first_within(experts, radius)},
              "policies": {}}
    profiles = {"expert": profile(experts, length)}
    policies = {name: Policy.load(checkpoint) for name, checkpoint in checkpoints.items()}
    kept = {}
    for name, checkpoint in checkpoints.items():
        policy = policies[name]
        cell = json.loads((cells / f"{CELLS[name]}.json").read_text())
        rows, base = {}, None
        variants = {"as it happened": (policy, 0), "fresh noise": (FreshNoise(policy), 0),
                    f"clock {shift:+d}": (policy, shift), f"clock {-shift:+d}": (policy, -shift)}
        for label, (acting, s) in variants.items():
            t1 = time.time()
            eps, traces = policy_rows(acting, seeds, s, decide)
            row = summary(eps, traces, radius)
            if base is None:
                kept[name], base = eps, row["success_by_seed"]
                profiles[name] = profile(traces, length)
                row["agrees_with_cell_seeds"] = sum(base[str(e["seed"])] == e["success"] for e in cell["episodes"]
                                                    if str(e["seed"]) in base)
                note = f"agrees with {CELLS[name]} on {row['agrees_with_cell_seeds']} seeds"
            else:
                gained = sum(row["success_by_seed"][k] and not base[k] for k in base)
                lost = sum(base[k] and not row["success_by_seed"][k] for k in base)
                row["vs_as_it_happened"] = {"gained": gained, "lost": lost, "mcnemar_p": mcnemar_exact(gained, lost)}
                note = f"+{gained} / -{lost}, p={row['vs_as_it_happened']['mcnemar_p']:.3g}"
            row["wall_s"] = round(time.time() - t1, 1)
            rows[label] = row
            print(f"{name:7s} {label:15s}: {row['successes']}/{row['trials']}  ({note})", flush=True)
        result["policies"][name] = {"checkpoint": checkpoint_hash(checkpoint), "weights": weights_hash(checkpoint),
                                    "cell": CELLS[name], "rows": rows}
    result["probes_at_no_ptp_failures"] = probes(policies, kept["no PTP"], CueReach.TARGETS, shift, decide)
    for phase, row in result["probes_at_no_ptp_failures"].items():
        policies = "; ".join(f"{n} push {p['push_median']:.2f}, hand moved {p['change_when_hand_moved_median']:+.2f}, "
                             f"clock {p[f'change_with_clock_{shift:+d}_median']:+.2f}"
                             for n, p in row["policies"].items())
        print(f"{phase}: {row['windows']} windows, hand body {row['hand_body_to_target_median_m']:.3f} m from the "
              f"target, expert push {row['expert_push']:.2f} (hand moved {row['expert_change_when_hand_moved']:+.2f}); "
              + policies)
    figure(profiles, radius, decide, out.with_suffix(".png"))
    commit = provenance.git("rev-parse", "HEAD")
    artifact = {"command": "python benchmarks/noptp_stall.py " + " ".join(argv), "commit": commit,
                "machine": provenance.machine(), "torch": torch.__version__,
                "seeds": [seeds[0], seeds[-1]], "shift": shift, "left_ready_m": LEFT_READY,
                "wall_s": round(time.time() - t0, 1), **result, "profiles": profiles}
    out.write_text(json.dumps(artifact, indent=1))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main(sys.argv[1:])
