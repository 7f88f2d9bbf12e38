"""`robopolicy bench serve`: what serving costs, measured side by side in one run (reported, not asserted).

1. Transport: round trip of an ``act`` request to `robopolicy serve` over loopback vs the same call in
   this process, for a 16-token x 7-d chunk from two 96x96 cameras + state (an untrained policy of
   that shape: the bytes and the work are what matter). Overhead = round trip - the server's own
   inference time for that call (p50, p99).
2. Pacing: a 50 Hz loop for ``seconds`` beside a server in another process kept busy by a client: the
   loop's period jitter (p99 of |period - nominal|), its lateness against the schedule t0 + k/50 and misses
   (ticks more than half a period late) on the absolute-deadline clock the control loop uses vs a naive
   loop sleeping ``period - elapsed`` (openpi's Runtime, LeRobot's async client): its periods are about
   right, but sleep's overshoot accumulates, so it drifts off the schedule. The server runs on one torch
   thread.
3. Batching: N clients sending at once vs the same N requests one by one: throughput against the ideal
   of one batch-N forward pass (the policy always runs padded batches of 8, so that ideal is N chunks per
   single call), and latency per client.
4. Real time per shipped config (``--configs``, a run of its own): each CPU-sized shipped config, untrained (a
   chunk's cost does not depend on the weights), served as one robot's server (``--act-batch 1``) and as
   evaluation runs it (``--act-batch 8``), one torch thread; one client asks for chunk after chunk of a moving
   episode (image policies: one new frame per chunk, the rest from the frame cache). Its round trip p50 / p99
   against the span of the chunk it answers (Ta actions at its task's control rate): a config fits real time
   when the p99 is at most a third of that span.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from robopolicy import provenance


def _policy(folder: Path):
    """An untrained image policy of the benchmark's shape (To=1: two 96x96 frames + state; H=16), saved."""
    from robopolicy.config import load_config
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.data.store import Field
    from robopolicy.policy import Policy

    camera = Field((96, 96, 3), np.dtype(np.uint8))
    schema = {"left_image": camera, "right_image": camera,
              "state": Field((7,), np.dtype(np.float32)), "action": Field((7,), np.dtype(np.float32))}
    rng = np.random.default_rng(0)
    norm = Normalizer.fit({"state": rng.normal(size=(64, 7)), "action": rng.uniform(-1, 1, (64, 7))},
                          {"state": "gaussian", "action": "minmax"})
    torch.manual_seed(0)
    policy = Policy(load_config("diffusion_image", ["data.horizon=16", "data.n_obs=1"]), schema, norm)
    policy.task = {"task": None, "control_hz": 50.0, "action_semantics": None, "env_spec": None}
    policy.save(folder)
    return Policy.load(folder)


def _window(policy):
    from robopolicy.data.windows import Window

    rng = np.random.default_rng(1)
    obs = {k: rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8) for k in ("left_image", "right_image")}
    obs["state"] = rng.normal(size=(1, 7)).astype(np.float32)
    return Window(obs, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: str | Path, threads: int = 1, pin: list[str] = (), args: list[str] = ()
                 ) -> tuple[subprocess.Popen, str]:
    """`robopolicy serve` on a free loopback port with ``threads`` torch threads, once /healthz answers;
    ``pin``: a command prefix such as ``taskset -c 1``; ``args``: more `serve` options."""
    port = _free_port()
    proc = subprocess.Popen([*pin, sys.executable, "-m", "robopolicy.cli", "serve", "--checkpoint", str(folder),
                             "--port", str(port), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc, f"ws://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def _pct(x, q):
    return float(np.percentile(np.asarray(x), q))


def transport(policy, url: str, calls: int) -> dict:
    from robopolicy.serve import protocol, wire
    from robopolicy.serve.client import PolicyClient

    window = _window(policy)
    msg = protocol.act_request(window, 1, seed=0)
    local, remote, overhead = [], [], []
    client = PolicyClient(url)
    for i in range(calls + 3):  # the first 3 of each: warm-up
        t0 = time.perf_counter()
        policy.act([window], generators=[torch.Generator().manual_seed(0)])
        t1 = time.perf_counter()
        reply = client.request(msg)
        t2 = time.perf_counter()
        if i >= 3:
            local.append((t1 - t0) * 1000)
            remote.append((t2 - t1) * 1000)
            # what the socket, the encoding and the event loop add: the round trip less the server's own
            # inference time for this very call (two processes' compute times are not comparable under load)
            overhead.append((t2 - t1) * 1000 - reply["server_timing"]["infer_ms"])
    client.close()
    frame = len(wire.packb(msg))
    return {"in_process_ms": {"p50": _pct(local, 50), "p99": _pct(local, 99)},
            "round_trip_ms": {"p50": _pct(remote, 50), "p99": _pct(remote, 99)},
            "overhead_ms": {"p50": _pct(overhead, 50), "p99": _pct(overhead, 99)},
            "request_bytes": frame, "calls": calls}


def pacing(policy, url: str, seconds: float, hz: float = 50.0) -> dict:
    """The two loops, one after the other, each beside the busy server; the work per tick is the same."""
    from robopolicy.serve import protocol
    from robopolicy.serve.client import PolicyClient
    from robopolicy.serve.clock import WallClock

    stop = threading.Event()

    def keep_busy():  # another robot's requests, back to back
        client = PolicyClient(url)
        msg = protocol.act_request(_window(policy), 1, seed=0)
        while not stop.is_set():
            client.request(msg)
        client.close()
    busy = threading.Thread(target=keep_busy, daemon=True)
    busy.start()
    period = 1.0 / hz
    work = np.random.default_rng(0).normal(size=(64, 64))

    def tick_work():
        for _ in range(5):
            work @ work  # a control tick's own computation (about a millisecond)

    results = {}
    for name in ("absolute", "naive"):
        lateness, clock = [], WallClock()
        n = int(seconds * hz)
        t0 = time.monotonic_ns()
        last = time.perf_counter()
        for k in range(1, n + 1):
            tick_work()
            if name == "absolute":
                deadline = t0 + int(k * period * 1e9)
                clock.sleep_until(deadline)
                lateness.append((time.monotonic_ns() - deadline) / 1e6)
            else:  # sleep what is left of the period since the tick started, as openpi's Runtime does
                time.sleep(max(0.0, period - (time.perf_counter() - last)))
                now = time.monotonic_ns()
                lateness.append((now - (t0 + int(k * period * 1e9))) / 1e6)  # against the schedule it drifts from
                last = time.perf_counter()
        lat = np.asarray(lateness)
        jitter = np.abs(np.diff(lat))  # each period's length minus the nominal one
        results[name] = {"ticks": n, "lateness_p50_ms": _pct(lat, 50), "lateness_p99_ms": _pct(lat, 99),
                         "period_jitter_p99_ms": _pct(jitter, 99),
                         "misses": int((lat > period * 1000 / 2).sum()),
                         "miss_rate": float((lat > period * 1000 / 2).mean()),
                         "drift_ms_at_end": float(lat[-1])}
    stop.set()
    busy.join(timeout=30)
    return results


def batching(policy, url: str, clients: int, rounds: int) -> dict:
    from robopolicy.serve import protocol
    from robopolicy.serve.client import PolicyClient

    window = _window(policy)
    conns = [PolicyClient(url) for _ in range(clients)]
    msgs = [protocol.act_request(window, i, seed=i) for i in range(clients)]
    conns[0].request(msgs[0])  # warm-up
    t0 = time.perf_counter()
    for _ in range(rounds):  # one by one
        for c, m in zip(conns, msgs):
            c.request(m)
    serial_s = (time.perf_counter() - t0) / rounds
    per_client, batches = [], []

    def one(i):
        t = time.perf_counter()
        r = conns[i].request(msgs[i])
        per_client.append((time.perf_counter() - t) * 1000)
        batches.append(r["server_timing"]["batch"])
    t0 = time.perf_counter()
    for _ in range(rounds):  # all at once
        threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    together_s = (time.perf_counter() - t0) / rounds
    single = []
    for _ in range(rounds):
        t = time.perf_counter()
        conns[0].request(msgs[0])
        single.append(time.perf_counter() - t)
    for c in conns:
        c.close()
    ideal = clients / float(np.median(single))  # N chunks in the time of one padded call
    return {"clients": clients, "chunks_per_s_one_by_one": clients / serial_s,
            "chunks_per_s_together": clients / together_s, "ideal_chunks_per_s": ideal,
            "fraction_of_ideal": (clients / together_s) / ideal, "mean_batch": float(np.mean(batches)),
            "latency_per_client_ms": {"p50": _pct(per_client, 50), "p99": _pct(per_client, 99)}}


REALTIME_SHARE = 1 / 3  # of the chunk's span a p99 round trip may take (the rest: delay compensation, jitter)


def _config_policy(name: str, folder: Path):
    """An untrained policy of a shipped config, shaped as the task it is for: cue-reach's camera and state for
    image configs, reach's 39-d state for state ones (both Meta-World, 80 Hz); saved in ``folder``."""
    from robopolicy.config import load_config
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.data.store import Field
    from robopolicy.policy import Policy

    cfg = load_config(name)
    image = not cfg.data.obs_keys or any(k.endswith("_image") for k in cfg.data.obs_keys)
    state_dim = 10 if image else 39
    schema = {"state": Field((state_dim,), np.dtype(np.float32)), "action": Field((4,), np.dtype(np.float32))}
    overrides = []
    if image:
        schema["corner2_image"] = Field((96, 96, 3), np.dtype(np.uint8))
        overrides = ["data.obs_keys=[corner2_image,state]"]
        if cfg.policy.encoder.crop is None:  # a stage-2 config: it carries its stage 1's encoder (crop 88)
            overrides.append("policy.encoder.crop=88")
    rng = np.random.default_rng(0)
    norm = Normalizer.fit({"state": rng.normal(size=(64, state_dim)), "action": rng.uniform(-1, 1, (64, 4))},
                          {"state": "minmax", "action": "minmax"})
    torch.manual_seed(0)
    policy = Policy(load_config(name, overrides), schema, norm)
    policy.task = {"task": "cue-reach" if image else "reach", "control_hz": 80.0, "action_semantics": None,
                   "env_spec": None}
    policy.save(folder)
    return policy


def _episode_windows(policy, n: int):
    """``n`` windows of one moving episode: each a step later than the last (so an image policy's frame cache
    holds all but the newest frame, as in a run)."""
    from robopolicy.data.windows import Window

    d, rng = policy.cfg.data, np.random.default_rng(2)
    span = (d.n_obs - 1) * d.stride + n
    frames = {k: (rng.integers(0, 256, (span, *policy.schema[k].shape), dtype=np.uint8) if policy.schema[k].is_image
                  else rng.normal(size=(span, *policy.schema[k].shape)).astype(np.float32)) for k in policy.obs_keys}
    return [Window({k: v[i: i + (d.n_obs - 1) * d.stride + 1: d.stride] for k, v in frames.items()}, i)
            for i in range(n)]


def realtime(calls: int = 20, configs: list[str] | None = None) -> list[dict]:
    """Section 4: per CPU-sized shipped config, the round trip at act batch 1 and 8 against its chunk's span."""
    from robopolicy.config import shipped_configs
    from robopolicy.serve import protocol
    from robopolicy.serve.client import PolicyClient

    rows = []
    for name in configs or shipped_configs():
        if name.endswith("_gpu"):
            rows.append({"config": name, "cpu": False, "real_time": "not timed (GPU-sized)"})
            continue
        with tempfile.TemporaryDirectory() as tmp:
            policy = _config_policy(name, Path(tmp) / "policy")
            d = policy.cfg.data
            row = {"config": name, "cpu": True, "head": policy.cfg.policy.head, "n_obs": d.n_obs,
                   "observations": policy.observations, "span_ms": 1000 * d.n_action_steps / policy.task["control_hz"]}
            for act_batch in (1, 8):
                proc, url = start_server(Path(tmp) / "policy", args=["--act-batch", str(act_batch)])
                try:
                    client, trips = PolicyClient(url), []
                    for i, w in enumerate(_episode_windows(policy, calls + 3)):
                        t0 = time.perf_counter()
                        client.request(protocol.act_request(w, i, seed=0))
                        if i >= 3:  # warm-up: caches, allocators
                            trips.append((time.perf_counter() - t0) * 1000)
                    client.close()
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                row[f"act_batch_{act_batch}"] = {"p50": _pct(trips, 50), "p99": _pct(trips, 99)}
            row["fits"] = row["act_batch_1"]["p99"] <= REALTIME_SHARE * row["span_ms"]
            row["real_time"] = "yes" if row["fits"] else "no"
            rows.append(row)
        r = rows[-1]
        print(f"{name:<20} " + ("GPU-sized: not timed on a CPU" if not r["cpu"] else
              f"{r['head']:<9} To={r['n_obs']:<3} {r['observations']:<6} chunk {r['span_ms']:.0f} ms | act batch 1: "
              f"p50 {r['act_batch_1']['p50']:6.1f} p99 {r['act_batch_1']['p99']:6.1f} ms | act batch 8: p50 "
              f"{r['act_batch_8']['p50']:6.1f} p99 {r['act_batch_8']['p99']:6.1f} ms | real time: "
              f"{'yes' if r['fits'] else 'no'}"), flush=True)
    return rows


def run_serve_bench(calls: int = 50, seconds: float = 60.0, clients: int = 4, quick: bool = False,
                    out: str | None = None, configs: bool = False) -> dict:
    if quick:
        calls, seconds, clients = 5, 2.0, 2
    torch.set_num_threads(1)  # this process's share: one core; the server has the other
    if configs:  # section 4, a run of its own
        result = {"realtime": realtime(calls=min(calls, 20) if not quick else 3,
                                       configs=["ebt", "ptp_stage2"] if quick else None),
                  "share": REALTIME_SHARE, "threads": 1}
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps({"command": "robopolicy bench serve --configs " + " ".join(sys.argv[4:]),
                                             "machine": provenance.machine(),
                                             "commit": provenance.git("rev-parse", "HEAD"), **result}, indent=1))
        return result
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "policy"
        policy = _policy(folder)
        proc, url = start_server(folder)
        try:
            result = {"transport": transport(policy, url, calls),
                      "batching": batching(policy, url, clients, max(calls // 5, 2)),
                      "pacing": pacing(policy, url, seconds)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    t, b, p = result["transport"], result["batching"], result["pacing"]
    print(f"transport (2x96x96 cameras + state, {t['request_bytes']} B request, 16x7 chunk): in process p50 "
          f"{t['in_process_ms']['p50']:.1f} ms, over loopback {t['round_trip_ms']['p50']:.1f} ms: overhead p50 "
          f"{t['overhead_ms']['p50']:.2f} ms, p99 {t['overhead_ms']['p99']:.2f} ms")
    print(f"batching {b['clients']} clients: together {b['chunks_per_s_together']:.1f} chunks/s vs one by one "
          f"{b['chunks_per_s_one_by_one']:.1f} ({b['chunks_per_s_together'] / b['chunks_per_s_one_by_one']:.2f}x); "
          f"{b['fraction_of_ideal']:.2f} of the ideal {b['ideal_chunks_per_s']:.1f} (mean batch {b['mean_batch']:.1f})"
          f"; latency per client p50 {b['latency_per_client_ms']['p50']:.0f} ms")
    for name, r in p.items():
        print(f"50 Hz loop beside the busy server, {name:<8}: period jitter p99 {r['period_jitter_p99_ms']:.2f} ms; "
              f"lateness against the schedule p50 {r['lateness_p50_ms']:.2f} ms, p99 {r['lateness_p99_ms']:.2f} ms, "
              f"misses {r['misses']}/{r['ticks']} ({r['miss_rate']:.2%}), "
              f"behind schedule at the end {r['drift_ms_at_end']:.1f} ms")
    if out:

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"command": "robopolicy bench serve " + " ".join(sys.argv[3:]),
                                         "machine": provenance.machine(),
                                         "commit": provenance.git("rev-parse", "HEAD"),
                                         **result}, indent=1))
    return result
