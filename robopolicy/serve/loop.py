"""``robopolicy run``: the robot-side control loop. One loop for sim and real arms.

Each tick, on an absolute deadline t0 + s * period of the loop's clock:
  read the (shielded) arm's state, stamped at acquisition -> record the action executed last tick ->
  take any reply that has arrived (by request id; late or stale ones are dropped) -> ask for the next
  chunk when the scheduler says so (never waiting for it) -> command the action due now, or hold.
With ``strategy="rtc"`` each request marks the queued actions that will run before its reply can
arrive as committed, and the chunk that comes back starts with them (real-time chunking).
Inference is asynchronous: requests go through a link (a thread), replies are picked up on later ticks.
The delay in ticks is estimated from recent round trips (warm-up calls discarded). What differs between the
clocks (when a reply counts as arrived, what delay to expect) is the clock's mailbox (serve/clock.py). A tick that wakes
more than half a period late is a miss; after ``max_misses`` in a row the arm holds, after twice that
it stops. When the server is lost the queue runs out, the arm holds, and the shield stops it once the
last command's time-to-live has expired; the episode ends with that reason, never a traceback.

On a lockstep clock the loop is deterministic: a reply becomes visible ``inject_latency`` after its
request in simulated time, and the loop waits (in real time) for it then. At zero latency the replan
strategy executes exactly what ``robopolicy eval`` executes, action for action.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from robopolicy.acting import Acting
from robopolicy.data.windows import History, WindowSpec, actions_hash
from robopolicy.errors import ConfigError
from robopolicy.serve import protocol
from robopolicy.serve.scheduler import Scheduler


@dataclass
class LoopConfig:
    strategy: str = "replan"
    acting: Acting = Acting()  # how the policy acts: K candidates (the verifier picks), the score acted on, ...
    ttl_s: float = 0.5  # how long a policy command stays valid: the arm stops this long after the last one
    inject_latency_s: float = 0.0  # added to every round trip (the latency x strategy table)
    max_misses: int = 5  # consecutive late ticks before the arm holds (twice as many: it stops)
    warmup: int = 2  # requests before the first episode whose latency is not counted
    probes: int = 5  # then timed requests: the loop refuses to start when their median outlasts a chunk
    reply_timeout_s: float = 10.0
    latency_window: int = 20  # round trips the delay estimate looks at (their maximum)


@dataclass
class RunEpisode:
    seed: int | None
    success: bool = False
    length: int = 0
    actions_hash: str = ""
    ended: str = ""  # "done" (the task's end), "stop:<reason>" (the shield stopped the arm), "lost"
    misses: int = 0  # ticks that did not command a fresh action on time: late, starved or both
    late: int = 0  # ticks more than half a period late
    starved: int = 0  # ticks with no action due (none yet, or the reply came stale): the arm held
    dropped: int = 0  # actions that arrived after they were due
    late_replies: int = 0  # replies to a request that had been superseded
    lateness_ms: list[float] = field(default_factory=list)  # per tick: wake-up time - deadline
    round_trip_ms: list[float] = field(default_factory=list)  # per chunk
    server_ms: list[float] = field(default_factory=list)
    delay_ticks: list[int] = field(default_factory=list)
    scores: list[list[float] | None] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)  # per chunk: draws beyond the first (retry_above)
    method: str | None = None
    shield: dict = field(default_factory=dict)
    # the last hold before a stop (the server lost): from the tick the queue ran out to the stop
    hold_drift_mm: float | None = None  # end-effector travel
    hold_setpoint_mm: float | None = None  # travel of the setpoint the arm's controller tracks
    hold_settled_mm: float | None = None  # end-effector travel over the hold's last quarter (still moving?)
    stop_after_ttl_ticks: int | None = None  # ticks between the TTL expiring and the arm stopping
    actions: np.ndarray | None = None

    def record(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k != "actions"}
        out["lateness_ms"] = [round(x, 3) for x in self.lateness_ms]
        return out


class ControlLoop:
    def __init__(self, arm, link, clock, cfg: LoopConfig):
        """``arm``: a SafetyShield around a driver; ``link``: RemoteLink or LocalLink; ``clock``: Wall/Lockstep."""
        self.arm, self.link, self.clock, self.cfg = arm, link, clock, cfg
        meta = link.metadata
        hz = meta.get("control_hz")
        if not hz:
            raise ConfigError("the policy's checkpoint names no control rate; retrain from a store that has one")
        driver_hz = 1e9 / arm.period_ns
        if abs(driver_hz - hz) > 1e-6 * hz:
            raise ConfigError(f"the policy runs at {hz} Hz, the arm at {driver_hz} Hz: resampling between rates "
                              "is the action-space adapters' job (not available yet)")
        if meta.get("action_semantics") and list(meta["action_semantics"]) != list(arm.action_semantics):
            raise ConfigError(f"the policy commands {meta['action_semantics']}, the arm takes "
                              f"{list(arm.action_semantics)}")
        shapes = arm.observation_shapes  # every driver declares them (robots/driver.py)
        problems = [f"{k!r}: the policy reads {tuple(v)}, the arm gives "
                    f"{tuple(shapes[k]) if k in shapes else 'nothing'}"
                    for k, v in (meta.get("obs_shapes") or {}).items() if tuple(shapes.get(k, ())) != tuple(v)]
        if problems:
            raise ConfigError("the policy does not fit the arm's observations (" + "; ".join(problems) +
                              f"; the arm gives {sorted(shapes)}): serve a policy trained on this robot's "
                              "observations")
        if meta.get("action_dim") != len(arm.action_semantics):
            raise ConfigError(f"the policy commands {meta.get('action_dim')}-d actions, the arm takes "
                              f"{len(arm.action_semantics)}")
        self.period_ns = int(round(1e9 / hz))
        self.spec = WindowSpec.of(meta)
        self.obs_keys, self.action_dim = list(meta["obs_keys"]), meta["action_dim"]
        self.scheduler = Scheduler(cfg.strategy, meta["n_action_steps"])
        # when replies count as arrived, and the delay to expect: the clock's (serve/clock.py)
        self.mail = clock.mailbox(link, self.period_ns, round(cfg.inject_latency_s * 1e9), cfg.latency_window)
        self._rid = 0
        self._committed: dict[int, int] = {}
        self._warm = False

    # ------------------------------------------------------------------ requests
    def _request(self, history: History, times: list[int], rng: np.ndarray | int, step: int = 0) -> dict:
        """``rng``: the sampler's state bytes the server sent back last time, or (before an episode's first reply)
        its seed: the server turns either into its generator, so the robot side needs no torch."""
        w = history.window(self.obs_keys)
        w.committed = self.scheduler.committed(step, self.delay()) if w.queued is not None else 0
        self._rid += 1
        self._committed = {self._rid: w.committed}  # only the newest request's reply is ever merged
        seeded = isinstance(rng, int)
        return protocol.act_request(w, self._rid, self.cfg.acting, rng=None if seeded else rng,
                                    seed=rng if seeded else None, obs_times_ns=[times[i] for i in w.steps])

    def delay(self) -> int:
        """Ticks between a request and its reply (the wall clock: the largest recent round trip; lockstep: the
        simulated latency)."""
        return self.mail.delay()

    @staticmethod
    def _checked(reply: dict | None) -> dict | None:
        if reply is not None and reply.get("type") == "error":
            raise ConfigError(f"the server refused the request: {reply['message']}")
        return reply

    def warm_up(self, history: History | None = None, times: list[int] | None = None, rng=None) -> list[float]:
        """Requests before the first episode (wall clock only: ``run`` calls it, as the first episode does when
        nobody has): ``warmup`` whose latency is noise (caches,
        allocators), then ``probes`` timed ones; refuses to start (ConfigError naming the figures and the
        fixes) when the median round trip is longer than the chunk the arm executes meanwhile, since every
        chunk would then arrive stale and the arm would hold until its TTL stopped it. Returns the round
        trips (ms)."""
        cfg, clock = self.cfg, self.clock
        if history is None:
            state = self.arm.start_episode(None)
            history, times = History(self.spec, self.action_dim), [state.t_ns]
            history.start(state.obs)
        if rng is None:
            rng = 0
        trips = []
        for i in range(cfg.warmup + cfg.probes):
            sent = clock.now_ns()
            self.mail.send(self._request(history, times, rng))
            if self._checked(self.mail.wait(cfg.reply_timeout_s, measure=False)) is None:
                self.mail.lose()
                return trips  # the server is gone: the episode will say so
            if i >= cfg.warmup:
                trips.append((clock.now_ns() - sent) / 1e6 + cfg.inject_latency_s * 1000)
        self._warm = True
        span = self.scheduler.n_action_steps * self.period_ns / 1e6
        if trips and float(np.median(trips)) > span:
            hz = 1e9 / self.period_ns
            raise ConfigError(
                f"the policy cannot keep up with the arm: its round trip is {np.median(trips):.0f} ms (median of "
                f"{len(trips)} warm-up requests, max {max(trips):.0f} ms) and the chunk it answers lasts {span:.0f} ms "
                f"({self.scheduler.n_action_steps} actions at {hz:g} Hz), so every chunk would arrive stale and the "
                "TTL would stop the arm. Fixes: serve a faster config (e.g. `ebt`), `robopolicy serve --act-batch 1`, "
                "`--strategy rtc`, a policy trained at a lower control rate, or `--lockstep` (simulated time)")
        return trips

    # ------------------------------------------------------------------ one episode
    def run_episode(self, seed: int | None, max_steps: int | None = None) -> RunEpisode:
        cfg, arm, clock, P = self.cfg, self.arm, self.clock, self.period_ns
        ep = RunEpisode(seed)
        self._events0 = self._shield_counts()
        history = History(self.spec, self.action_dim)
        self.scheduler.reset()
        rng = 0 if seed is None else int(seed)  # the first request's seed; then the state the server returns
        state = arm.start_episode(seed)
        history.start(state.obs)
        times = [state.t_ns]
        if not self._warm and self.mail.measures_latency:
            self.warm_up(history, times, rng)
        # the first chunk is waited for: the arm stands still at its start until it arrives
        self.mail.send(self._request(history, times, rng))
        reply = self._checked(self.mail.wait(cfg.reply_timeout_s))
        if reply is None:
            self.mail.lose()
            ep.ended = "lost"
            return self._finish(ep, history)
        rng = self._take(ep, reply, history, 0, 0)
        arm.restart_clock()
        t0 = clock.now_ns()
        times[0] = t0
        superseded = self.mail.superseded
        last_sent, step, late_run = None, 0, 0
        held = []  # states since the queue ran out (the fault check)
        while True:
            deadline = t0 + step * P
            if step > 0:
                clock.sleep_until(deadline)
                lateness = clock.now_ns() - deadline
                ep.lateness_ms.append(lateness / 1e6)
                late = lateness > P // 2
                ep.late += late
                late_run = late_run + 1 if late else 0
            state = arm.read_state()
            if step > 0:
                executed = last_sent if last_sent is not None else self._hold_of(history)
                history.record(executed, state.obs)
                times.append(state.t_ns)
            if arm.stopped:
                ep.ended = f"stop:{arm.events.stop_reason}"
                if held:
                    ee = np.array([h.ee_pos for h in held + [state]])
                    ep.hold_drift_mm = float(np.linalg.norm(ee[-1] - ee[0]) * 1000)
                    ep.hold_settled_mm = float(np.linalg.norm(ee[-1] - ee[3 * len(ee) // 4]) * 1000)
                    if state.ee_target is not None:
                        ep.hold_setpoint_mm = float(np.linalg.norm(state.ee_target - held[0].ee_target) * 1000)
                    ttl_at = arm.expires_ns
                    ep.stop_after_ttl_ticks = None if ttl_at is None else \
                        math.ceil((arm.events.stopped_at_ns - ttl_at) / P)
                break
            if state.done or (max_steps is not None and step >= max_steps):
                ep.ended, ep.success = "done", state.success
                break
            # a reply counts once it has arrived and its (injected) latency has passed: the mailbox knows when
            reply = self._checked(self.mail.receive(cfg.reply_timeout_s))
            if reply is not None:
                rng = self._take(ep, reply, history, step, self.delay())
            elif self.mail.pending is not None and self.link.lost is not None:
                self.mail.lose()
            idle = self.mail.pending is None and self.link.lost is None
            if idle and self.scheduler.needs_request(step, self.delay()):
                self.mail.send(self._request(history, times, rng, step))
                reply = self._checked(self.mail.receive(cfg.reply_timeout_s))  # zero latency: here this tick
                if reply is not None:
                    rng = self._take(ep, reply, history, step, self.delay())
            action = self.scheduler.action(step)
            ep.misses += bool((step > 0 and late) or action is None)
            if late_run >= 2 * cfg.max_misses:
                arm.estop("missed deadlines")
                step += 1
                continue
            if action is None or late_run >= cfg.max_misses:
                ep.starved += action is None
                if state.ee_pos is not None:
                    held.append(state)
                arm.hold()
                last_sent = None
            else:
                held = []
                last_sent = arm.command(action, deadline)
            step += 1
        ep.late_replies = self.mail.superseded - superseded
        return self._finish(ep, history)

    def _take(self, ep: RunEpisode, reply: dict, history: History, step: int, delay: int) -> np.ndarray:
        """Merge a chunk reply; returns the sampler's RNG state to send next."""
        if reply.get("type") == "error":
            raise ConfigError(f"the server refused the request: {reply['message']}")
        plan = np.asarray(reply["plan"], np.float32)
        self.scheduler.merge(int(reply["t"]), plan, step, delay, self._committed.get(reply.get("id"), 0))
        history.plan(plan, int(reply["t"]))
        ep.server_ms.append(float(reply.get("server_timing", {}).get("total_ms", 0.0)))
        ep.delay_ticks.append(delay)
        ep.scores.append(None if reply.get("scores") is None else [float(x) for x in reply["scores"]])
        ep.chosen.append(int(reply.get("chosen", 0)))
        ep.retried.append(int(reply.get("retried", 0)))
        ep.method = ep.method or reply.get("method")
        if self.mail.round_trips:
            ep.round_trip_ms.append(self.mail.round_trips[-1] / 1e6)
        return reply["rng"]

    def _hold_of(self, history: History) -> np.ndarray:
        from robopolicy.robots.driver import hold_action

        return hold_action(tuple(self.arm.action_semantics), history.actions[-1] if history.actions else None)

    def _shield_counts(self) -> dict[str, int]:
        ev = self.arm.events
        return {"rejected": ev.rejected, "clamped": ev.clamped, "workspace": ev.workspace, "holds": ev.holds}

    def _finish(self, ep: RunEpisode, history: History) -> RunEpisode:
        ep.dropped = self.scheduler.dropped
        executed = np.stack(history.actions) if history.actions else np.zeros((0, self.action_dim), np.float32)
        ep.length, ep.actions = len(executed), executed
        ep.actions_hash = actions_hash(executed)
        ep.shield = {k: v - self._events0[k] for k, v in self._shield_counts().items()}  # this episode's
        return ep
