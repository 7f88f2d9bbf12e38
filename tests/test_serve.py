"""`robopolicy serve` and `robopolicy run`: a real server process on loopback, real clients (ours and
openpi's, in its own venv), the control loop on a real MuJoCo arm behind the shield.

The reach policy of conftest serves every test. The claims tested: the loop through the server executes
exactly what `robopolicy eval` executes (lockstep clock, zero latency); the token is checked before a
message is decoded; /healthz answers while a slow chunk is computed; requests that arrive together share
one batch and each row equals its in-process answer bit for bit; bad messages get error replies and the
server stays up; SIGTERM drains; a server killed mid-run leaves the arm holding, then stopped. `run` checks
the policy against the robot and its speed against the control rate before the first tick, applies the arm's
per-tick step (or --max-step), and counts stale and starved ticks as misses.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli
from robopolicy.acting import Acting
from robopolicy.data.windows import History, WindowSpec
from robopolicy.serve import protocol, wire


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`robopolicy serve` in a subprocess, as a user starts it."""

    def __init__(self, checkpoint: Path, *extra: str, env: dict | None = None):
        self.port = _free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block the server
        # (the threads of this process, so its arithmetic is this process's: bit-exact comparisons hold)
        self.proc = subprocess.Popen([sys.executable, "-m", "robopolicy.cli", "serve", "--checkpoint", str(checkpoint),
                                      "--port", str(self.port), *extra], stdout=self.log, stderr=subprocess.STDOUT,
                                     text=True, cwd=ROOT, env={**os.environ, **(env or {})})
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.output()}")
            try:
                self.health()
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise AssertionError("the server did not come up in 60 s")

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
            return json.loads(r.read())

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.output()


@pytest.fixture(scope="module")
def server(reach_run):
    s = Server(reach_run / "policy")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def policy(reach_run):
    from robopolicy.policy import Policy

    return Policy.load(reach_run / "policy")


def _window(policy, seed=1_000_000, steps=0, queued=False):
    """The window after ``steps`` expert steps of an episode (with the last chunk's plan as queued actions)."""
    from robopolicy import envs

    env = envs.make("reach")
    obs, _ = env.reset(seed=seed)
    expert = env.make_expert()
    expert.reset()
    d = policy.cfg.data
    h = History(WindowSpec(d.n_obs, d.horizon, d.stride), policy.action_dim)
    h.start(obs)
    for _ in range(steps):
        a = expert.act(env)
        obs, *_ = env.step(a)
        h.record(a, obs)
    if queued:
        h.plan(np.zeros((d.horizon - d.n_obs + 1, policy.action_dim), np.float32), h.t)
    env.close()
    return h.window(policy.obs_keys)


# ---------------------------------------------------------------------- the wire
def test_the_wire_refuses_what_could_hurt_and_round_trips_the_rest():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.uint8(7), "c": [1, "x", None],
           "d": np.zeros((0, 4), np.int64), "e": np.ones(3, ">f8")}
    back = wire.unpackb(wire.packb(msg))
    assert np.array_equal(back["a"], msg["a"]) and back["a"].dtype == np.float32 and back["b"] == 7
    assert back["c"] == [1, "x", None] and back["d"].shape == (0, 4) and np.array_equal(back["e"], msg["e"])
    import msgpack

    def arr(dtype="<f4", shape=(2,), data=b"\0" * 8):
        return msgpack.packb({"x": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": list(shape)}})
    for frame, why in [(arr("|O8"), "not allowed"), (arr("<c8", data=b"\0" * 16), "not allowed"),
                       (arr("|V8"), "not allowed"), (arr(shape=(10 ** 9,)), "elements"),
                       (arr(shape=(2,), data=b"\0" * 7), "needs 8 bytes"), (arr(shape=(-1,)), "shape"),
                       (arr(shape=(2,) * 9, data=b""), "shape"), (b"\xc1garbage", "not a msgpack"),
                       (wire.packb({"x": 1})[:-1], "not a msgpack"), (msgpack.packb(msgpack.ExtType(5, b"x")),
                                                                     "extension")]:
        with pytest.raises(wire.WireError, match=why):
            wire.unpackb(frame)
    with pytest.raises(wire.WireError, match="text"):
        wire.unpackb("a text frame")
    with pytest.raises(wire.WireError, match="dtype"):
        wire.packb({"x": np.array([object()])})


# ---------------------------------------------------------------------- server + loop
def test_the_loop_through_the_server_executes_what_eval_executes(server, policy, tmp_path):
    """Lockstep clock, zero latency, replan: action for action what `robopolicy eval`'s loop executes."""
    from robopolicy import envs
    from robopolicy.eval.rollout import LocalEnv, run_episodes
    from robopolicy.serve.client import RemoteLink
    from robopolicy.serve.loop import LoopConfig
    from robopolicy.serve.run import run

    seeds = list(envs.eval_seeds(3))
    offline = {e.seed: (e.success, e.length, e.actions_hash)
               for e in run_episodes(policy, [LocalEnv(envs.make("reach"))], seeds)}
    link = RemoteLink(server.url)
    try:
        meta = link.metadata
        assert meta["task"] == "reach" and meta["control_hz"] == 80.0 and meta["obs_keys"] == ["state"]
        assert meta["action_semantics"] == ["ee_delta_x", "ee_delta_y", "ee_delta_z", "gripper"]
        result = run(link, "sim:reach", seeds, LoopConfig(), lockstep=True, out=tmp_path / "run", progress=False,
                     videos=1)
    finally:
        link.close()
    served = {e.seed: (e.success, e.length, e.actions_hash) for e in result.episodes}
    assert served == offline
    # the video of the first episode: its executed actions replayed after the run, one frame per step
    first = result.episodes[0]
    clip = tmp_path / "run" / "videos" / f"{first.seed}-{'success' if first.success else 'failure'}.mp4"
    import cv2
    frames = int(cv2.VideoCapture(str(clip)).get(cv2.CAP_PROP_FRAME_COUNT))
    assert frames == first.length + 1 and clip.name in (tmp_path / "run" / "report.md").read_text()
    assert np.array_equal(np.load(tmp_path / "run" / "actions" / f"{first.seed}.npy"), first.actions)
    assert all(e.ended == "done" and e.starved == 0 and e.dropped == 0 for e in result.episodes)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "success" in report and (tmp_path / "run" / "timing.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "run.json").read_text())["summary"]["episodes"] == 3


def test_health_answers_while_a_slow_chunk_is_in_flight(server, policy):
    """Inference runs off the event loop: /healthz within a few ms while a K=64 chunk is computed."""
    from robopolicy.serve.client import PolicyClient

    client = PolicyClient(server.url)
    window = _window(policy, queued=True)  # queued actions: evidence, so all 64 candidates are sampled
    slow = protocol.act_request(window, 1, acting=Acting(k=64), seed=0)
    result = {}

    def call():
        t0 = time.perf_counter()
        result["reply"] = client.request(slow, timeout_s=120)
        result["s"] = time.perf_counter() - t0
    th = threading.Thread(target=call)
    th.start()
    while server.health()["in_flight"] == 0 and th.is_alive():
        time.sleep(0.002)
    times = []
    while th.is_alive() and len(times) < 20:
        t0 = time.perf_counter()
        health = server.health()
        times.append(time.perf_counter() - t0)
    th.join()
    client.close()
    assert result["reply"]["type"] == "chunk" and len(result["reply"]["scores"]) == 64
    assert len(times) >= 3, f"the slow chunk took only {result['s']:.2f} s"
    assert health["in_flight"] >= 1
    assert np.median(times) < 0.05 < result["s"], (times, result["s"])  # answered while the chunk was computed


def test_requests_that_arrive_together_share_a_batch_and_each_equals_its_call_alone(server, policy):
    from robopolicy.serve.client import PolicyClient

    clients = [PolicyClient(server.url) for _ in range(4)]
    windows = [_window(policy, seed=1_000_000 + i, steps=5 + i) for i in range(2)]
    unsure = _window(policy, steps=3, queued=True)  # sampled another way (K=2, retried): a call of its own
    blocker = protocol.act_request(_window(policy, queued=True), 99, acting=Acting(k=64), seed=0)
    replies = {}

    def call(i, msg):
        replies[i] = clients[i].request(msg, timeout_s=120)
    first = threading.Thread(target=call, args=(0, blocker))
    first.start()
    while server.health()["in_flight"] == 0:
        time.sleep(0.002)
    time.sleep(0.05)  # past the engine's 2 ms gather window: the blocker is computing, alone
    rest = [threading.Thread(target=call, args=(i + 1, protocol.act_request(w, i, seed=7 + i)))
            for i, w in enumerate(windows)]
    rest.append(threading.Thread(target=call, args=(3, protocol.act_request(unsure, 5, Acting(k=2, retry_above=-1.0),
                                                                                seed=11))))
    for th in rest:
        th.start()
    for th in [first, *rest]:
        th.join()
    for c in clients:
        c.close()
    for i, w in enumerate(windows):
        reply = replies[i + 1]
        assert reply["type"] == "chunk" and reply["server_timing"]["batch"] == 2  # they waited, then shared a call
        alone = policy.act([w], generators=[torch.Generator().manual_seed(7 + i)])[0]
        assert np.array_equal(reply["actions"], alone.actions) and reply["id"] == i
    reply = replies[3]
    assert reply["server_timing"]["batch"] == 1 and reply["retried"] == 1 and reply["method"] == "coherence"
    alone = policy.act([unsure], Acting(k=2, retry_above=-1.0), generators=[torch.Generator().manual_seed(11)])[0]
    assert np.array_equal(reply["actions"], alone.actions)


# ---------------------------------------------------------------------- run: checks and limits
def test_run_applies_the_arms_per_tick_step_and_max_step_overrides_it(server, policy, tmp_path):
    """The sim arm's step is its task's (Meta-World: one unit per axis, two for the gripper); `--max-step`
    overrides it, every executed command respects it, and the report counts the clamped commands."""
    from robopolicy import envs
    from robopolicy.serve.clock import LockstepClock
    from robopolicy.serve.loop import ControlLoop, LoopConfig
    from robopolicy.serve.run import make_arm
    from robopolicy.serve.service import LocalLink

    link = LocalLink(policy)
    clock = LockstepClock()
    arm = make_arm("sim:reach", clock, link.metadata, 0.5)
    assert arm.max_step.tolist() == list(envs.get("reach").factory.max_step) == [1.0, 1.0, 1.0, 2.0]
    arm.close()
    arm = make_arm("sim:reach", clock, link.metadata, 0.5, max_step=0.02)
    ep = ControlLoop(arm, link, clock, LoopConfig()).run_episode(envs.eval_seeds(1)[0], max_steps=120)
    arm.close()
    steps = np.abs(np.diff(ep.actions[:, 3]))
    assert np.abs(ep.actions[:, :3]).max() <= 0.02 + 1e-6 and steps.max() <= 0.02 + 1e-6
    assert ep.shield["clamped"] > ep.length // 2  # the policy commands more than 0.02 most of the time
    # through the command line, against the real server: the flag reaches the shield, the report counts
    r = run_cli("run", "--server", server.url, "--robot", "sim:reach", "--lockstep", "--episodes", "1",
                "--max-step", "0.5,0.5,0.5,0.5", "--out", str(tmp_path / "run"), "--quiet")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["max_step"] == pytest.approx([0.5] * 4) and meta["summary"]["shield"]["clamped"] > 0
    assert "commands clamped" in r.stdout and "clamped commands" in (tmp_path / "run" / "report.md").read_text()
    r = run_cli("run", "--server", server.url, "--robot", "sim:reach", "--lockstep", "--max-step", "0.1,0.1")
    assert r.returncode == 2 and "max_step has 2 values" in r.stderr and "Traceback" not in r.stderr


def test_stale_and_starved_ticks_count_as_misses(policy):
    """Lockstep, each reply 20 ticks after its request while a chunk plans 15 actions ahead: the queue runs
    dry 5 ticks per chunk, the arm holds, and every such tick is a miss though no tick woke late."""
    from robopolicy import envs
    from robopolicy.serve.loop import LoopConfig
    from robopolicy.serve.run import run, summary
    from robopolicy.serve.service import LocalLink

    link = LocalLink(policy)
    period = 1 / link.metadata["control_hz"]
    result = run(link, "sim:reach", list(envs.eval_seeds(1)), LoopConfig(inject_latency_s=20 * period),
                 lockstep=True, progress=False)
    ep = result.episodes[0]
    s = summary(result.episodes, period * 1000)
    assert ep.late == 0 and ep.starved > 0 and ep.misses == ep.starved
    assert s["misses"] == ep.starved and s["miss_rate"] == pytest.approx(ep.starved / s["ticks"])


def test_run_checks_the_policy_against_the_robot_before_the_first_tick(server, policy, tmp_path):
    """A reach policy on sim:cue-reach (as eval refuses it), or a policy whose observations the arm does not
    give: one line, exit 2, before any report file; not a failure after the progress bar."""
    from robopolicy.config import load_config
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.data.store import Field
    from robopolicy.errors import ConfigError
    from robopolicy.policy import Policy
    from robopolicy.serve.loop import LoopConfig
    from robopolicy.serve.run import run
    from robopolicy.serve.service import LocalLink

    r = run_cli("run", "--server", server.url, "--robot", "sim:cue-reach", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "trained on 'reach'" in r.stderr and "--robot sim:reach" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    # a policy with no task on its card (an imported store): the observations are checked instead
    schema = {"state": Field((5,), np.dtype("float32")), "action": Field((4,), np.dtype("float32"))}
    span = {"state": np.ones((2, 5), np.float32) * [[-1], [1]], "action": np.ones((2, 4), np.float32) * [[-1], [1]]}
    other = Policy(load_config("diffusion", ["policy.diffusion.down_dims=[16,32]"]), schema,
                   Normalizer.fit(span, {"state": "minmax", "action": "minmax"})).eval()
    other.task = {"task": None, "control_hz": 80.0, "action_semantics": None, "env_spec": None}
    with pytest.raises(ConfigError, match=r"'state': the policy reads \(5,\), the arm gives \(39,\)"):
        run(LocalLink(other), "sim:reach", [0], LoopConfig(), lockstep=True, out=tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()


def test_run_refuses_a_policy_too_slow_for_the_control_rate(reach_run, tmp_path):
    """The README's serve/run example with a policy slower than its chunk (here the shipped `diffusion` config
    at 30 DDIM steps, untrained: speed does not depend on training): the warm-up measures the round trip and
    the loop refuses to start, naming the figures and the fixes, instead of every reply arriving stale and
    the TTL stopping the arm while the report says 0 misses."""
    from robopolicy.config import load_config
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.data.store import DemoStore
    from robopolicy.policy import Policy

    store = DemoStore.open(reach_run.parent / "reach.zarr")
    slow = Policy(load_config("diffusion", ["policy.diffusion.inference_steps=30"]), store.schema,
                  Normalizer.fit(store.load(["state", "action"]), {"state": "minmax", "action": "minmax"})).eval()
    slow.task = Policy.load(reach_run / "policy").task
    slow.save(tmp_path / "slow")
    s = Server(tmp_path / "slow")
    try:
        r = run_cli("run", "--server", s.url, "--robot", "sim:reach", "--out", str(tmp_path / "run"))
    finally:
        s.stop()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "cannot keep up" in line and "round trip" in line and "--act-batch 1" in line and "--lockstep" in line
    assert not (tmp_path / "run" / "episodes.jsonl").exists()
    print(line)


def test_act_batch_1_serves_each_row_alone_and_says_so(policy, monkeypatch):
    """`serve --act-batch 1`: every network call is one row (the lowest latency for one robot), each reply
    exactly Policy.act at act_batch=1; the metadata names the setting."""
    from conftest import InProcessServer
    from robopolicy.policy import Policy
    from robopolicy.serve.client import PolicyClient

    calls, real = [], Policy.act

    def recording(self, windows, *args, **kw):
        calls.append(kw.get("act_batch"))
        return real(self, windows, *args, **kw)
    monkeypatch.setattr(Policy, "act", recording)
    w = _window(policy)
    with InProcessServer(policy, act_batch=1) as server:
        client = PolicyClient(server.url)
        assert client.metadata["act_batch"] == 1
        reply = client.request(protocol.act_request(w, 1, seed=5))
        client.close()
    assert calls == [1]
    alone = real(policy, [w], generators=[torch.Generator().manual_seed(5)], act_batch=1)[0]
    assert np.array_equal(reply["plan"], alone.plan.astype(np.float32))


def test_bad_messages_get_error_replies_and_the_server_stays_up(server, policy):
    from websockets.sync.client import connect

    from robopolicy.serve.client import PolicyClient

    good = PolicyClient(server.url)
    window = _window(policy, steps=3)
    request = protocol.act_request(window, 1, seed=3)
    expected = policy.act([window], generators=[torch.Generator().manual_seed(3)])[0].actions
    bad = [b"", b"\xff\xfe", wire.packb([1, 2]), wire.packb({"type": "act"}),
           wire.packb({**request, "obs": {"state": window.obs["state"][:, :5]}}),
           wire.packb({**request, "obs": {"state": window.obs["state"] > 0}}),
           wire.packb({**request, "obs": {"state": np.full_like(window.obs["state"], np.nan)}}),
           wire.packb({**request, "k": 10 ** 9}), wire.packb({**request, "rng": np.zeros(3, np.uint8)}),
           wire.packb({**request, "queued": np.zeros((3, 9), np.float32)}), wire.packb({"type": "dance"})]
    ws = connect(server.url).__enter__()
    ws.recv()  # metadata
    ws.send(wire.packb({"type": "hello", "protocol": protocol.PROTOCOL}))
    ws.recv()
    for frame in bad:
        ws.send(frame)
        reply = wire.unpackb(ws.recv(timeout=30))
        assert reply["type"] == "error" and reply["message"] and "Traceback" not in reply["message"], reply
        assert np.array_equal(good.request(request)["actions"], expected)  # the good client is served meanwhile
    ws.send(wire.packb({"type": "hello", "protocol": 999}))
    assert wire.unpackb(ws.recv())["code"] == "protocol"
    ws.close()
    good.close()
    assert server.health()["ok"]


def test_a_token_is_required_off_loopback_and_checked_before_decoding(reach_run, tmp_path):
    from robopolicy.serve.client import PolicyClient, ServerError

    r = subprocess.run([sys.executable, "-m", "robopolicy.cli", "serve", "--checkpoint", str(reach_run),
                        "--host", "0.0.0.0"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "--token-file" in r.stderr and "Traceback" not in r.stderr
    token = tmp_path / "token"
    token.write_text("s3cret-token-of-some-length\n")
    s = Server(reach_run, "--token-file", str(token))
    try:
        with pytest.raises(ServerError, match="401"):
            PolicyClient(s.url)
        with pytest.raises(ServerError, match="401"):
            PolicyClient(s.url, token="wrong-token-of-some-length")
        assert PolicyClient(s.url, token="s3cret-token-of-some-length").metadata["server"] == "robopolicy"
    finally:
        s.stop()


@pytest.mark.slow  # a server process of its own (and a venv): CI runs it in the slow suite
def test_sigterm_lets_the_chunk_in_flight_finish_then_exits_cleanly(reach_run, policy):
    from robopolicy.serve.client import PolicyClient

    s = Server(reach_run)
    client = PolicyClient(s.url)
    result = {}
    th = threading.Thread(target=lambda: result.update(
        reply=client.request(protocol.act_request(_window(policy, queued=True), 5, Acting(k=64), seed=0),
                             timeout_s=120)))
    th.start()
    while s.health()["in_flight"] == 0:
        time.sleep(0.002)
    s.proc.send_signal(signal.SIGTERM)
    th.join(60)
    s.proc.wait(timeout=60)
    out = s.output()
    assert result["reply"]["type"] == "chunk" and result["reply"]["id"] == 5
    assert s.proc.returncode == 0 and "Traceback" not in out, out


@pytest.mark.slow  # a server process of its own (and a venv): CI runs it in the slow suite
def test_a_server_killed_mid_run_leaves_the_arm_holding_then_stopped(reach_run, tmp_path):
    """SIGKILL the server while `robopolicy run` drives sim:reach in real time: the queue runs out, the arm
    holds, the shield stops it within a tick of the last command's time-to-live, and the run ends with its
    own exit code and a report, not a traceback. Holding: the setpoint does not move at all, and the end
    effector comes to rest (under 1 mm over the hold's last quarter). It does not stay within 1 mm of where
    it was when the queue ran out: Meta-World's hand trails its mocap setpoint by up to ~2 cm at full speed
    (a soft weld) and catches up once the hold begins."""
    s = Server(reach_run, "--act-batch", "1", env={"OMP_NUM_THREADS": "1"})  # a core each, server and loop
    run = subprocess.Popen([sys.executable, "-m", "robopolicy.cli", "run", "--server", s.url, "--robot", "sim:reach",
                            "--episodes", "3", "--ttl", "1.0", "--out", str(tmp_path / "run"), "--quiet"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while s.health()["served"] < 10:  # warm-up (7 requests) and the first chunks are through
        assert run.poll() is None and time.time() < deadline, run.communicate()
        time.sleep(0.01)
    s.proc.kill()
    s.proc.wait()
    out, err = run.communicate(timeout=120)
    assert run.returncode == 3, (out, err)
    assert "Traceback" not in err and "stopped (stop:ttl)" in err
    episodes = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    last = episodes[-1]
    assert last["ended"] == "stop:ttl" and last["starved"] > 0
    assert last["hold_setpoint_mm"] == 0.0 and last["hold_settled_mm"] < 1.0, last
    assert last["hold_drift_mm"] < 30.0, last
    assert last["stop_after_ttl_ticks"] is not None and last["stop_after_ttl_ticks"] <= 1
    assert "stopped early" in (tmp_path / "run" / "report.md").read_text()
    print(f"server SIGKILLed mid-run: exit code {run.returncode}, ended {last['ended']}, starved ticks "
          f"{last['starved']}; setpoint moved {last['hold_setpoint_mm']:.2f} mm, end effector travelled "
          f"{last['hold_drift_mm']:.1f} mm after the queue ran out ({last['hold_settled_mm']:.2f} mm over the "
          f"hold's last quarter); stopped {last['stop_after_ttl_ticks']} tick(s) after the TTL expired")


@pytest.mark.slow  # a server process of its own (and a venv): CI runs it in the slow suite
def test_openpis_own_client_drives_the_policy_unchanged(reach_run, policy, tmp_path):
    """openpi-client 0.1.2 from PyPI, in its own venv (numpy<2): metadata on connect, float64 state cast,
    one action per tick for a policy with history; each equals the in-process computation."""
    from peers import openpi_python

    from robopolicy import envs

    env = envs.make("reach")
    obs, _ = env.reset(seed=1_000_000)
    expert = env.make_expert()
    expert.reset()
    frames = [obs["state"]]
    for _ in range(20):
        obs, *_ = env.step(expert.act(env))
        frames.append(obs["state"])
    env.close()
    np.save(tmp_path / "states.npy", np.stack(frames).astype(np.float64))  # openpi clients send numpy's float64
    script = tmp_path / "client.py"
    script.write_text(
        "import json, sys, numpy as np\n"
        "from openpi_client import websocket_client_policy\n"
        "p = websocket_client_policy.WebsocketClientPolicy(host='127.0.0.1', port=int(sys.argv[1]))\n"
        "meta = p.get_server_metadata()\n"
        "acts = [p.infer({'state': s, 'prompt': 'reach'})['actions'] for s in np.load(sys.argv[2])]\n"
        "np.save(sys.argv[3], np.stack(acts))\n"
        "print(json.dumps({'mode': meta['openpi']['mode'], 'keys': meta['obs_keys']}))\n")
    s = Server(reach_run)
    try:
        r = subprocess.run([str(openpi_python()), str(script), str(s.port), str(tmp_path / "states.npy"),
                            str(tmp_path / "actions.npy")], capture_output=True, text=True, timeout=300)
    finally:
        s.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.splitlines()[-1]) == {"mode": "per_tick", "keys": ["state"]}
    got = np.load(tmp_path / "actions.npy")
    assert got.shape == (21, 1, 4)
    # the same ticks in process: the server's history, one action per tick, seed 0 for the episode
    d = policy.cfg.data
    h, queue, g = History(WindowSpec(d.n_obs, d.horizon, d.stride), policy.action_dim), [], torch.Generator()
    g.manual_seed(0)
    want = []
    for i, state in enumerate(np.load(tmp_path / "states.npy").astype(np.float32)):
        if i == 0:
            h.start({"state": state})
        else:
            h.record(want[-1], {"state": state})
        if not queue:
            chunk = policy.act([h.window(policy.obs_keys)], generators=[g])[0]
            h.plan(chunk.plan, chunk.t)
            queue = list(chunk.actions)
        want.append(queue.pop(0))
    assert np.array_equal(got[:, 0], np.stack(want))


@pytest.mark.slow
def test_fuzzing_10000_messages_never_takes_the_server_down(reach_run, policy):
    """10,000+ hostile messages over loopback -- wrong dtypes and shapes, NaN, headers claiming 1e9 elements,
    object and complex dtypes, truncated, bit-flipped and garbage frames, oversized frames, slow and many
    connections, wrong tokens -- while a good client keeps getting its correct replies."""
    import msgpack
    from websockets.sync.client import connect

    from robopolicy.serve.client import PolicyClient, ServerError

    token = "fuzz-token-0123456789abcdef"
    tf = Path(tempfile.mkdtemp()) / "token"
    tf.write_text(token)
    s = Server(reach_run, "--token-file", str(tf), env={"OMP_NUM_THREADS": "1"})
    rng = np.random.default_rng(0)
    window = _window(policy, steps=4)
    request = protocol.act_request(window, 1, seed=11)
    good_frame = wire.packb(request)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's (OMP_NUM_THREADS=1): the same arithmetic, so equal bit for bit
    try:
        expected = policy.act([window], generators=[torch.Generator().manual_seed(11)])[0].actions
    finally:
        torch.set_num_threads(threads)

    def hostile(i: int) -> bytes:
        kind = i % 10
        if kind == 0:  # a valid envelope, wrong dtype
            dt = rng.choice(["<i8", "<f2", "|u1", "|b1", ">f8"])
            return wire.packb({**request, "obs": {"state": window.obs["state"].astype(np.dtype(dt))}})
        if kind == 1:  # wrong shape
            shape = tuple(int(n) for n in rng.integers(0, 5, int(rng.integers(0, 4))))
            return wire.packb({**request, "obs": {"state": rng.normal(size=shape).astype(np.float32)}})
        if kind == 2:  # NaN / inf
            x = window.obs["state"].copy()
            x.flat[rng.integers(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
            return wire.packb({**request, "obs": {"state": x}})
        if kind == 3:  # a header claiming far more than it holds
            return msgpack.packb({**{k: v for k, v in request.items() if k != "obs"},
                                  "obs": {"state": {b"__ndarray__": True, b"data": b"\0" * 16, b"dtype": "<f4",
                                                    b"shape": [int(rng.choice([10 ** 9, 2 ** 40, 7]))]}}},
                                 default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))
        if kind == 4:  # object / complex / void dtypes
            return msgpack.packb({"type": "act", "id": 3, "obs": {"state": {
                b"__ndarray__": True, b"data": b"\0" * 16, b"dtype": str(rng.choice(["|O8", "<c8", "|V16", "<U4"])),
                b"shape": [1]}}})
        if kind == 5:  # truncated
            return good_frame[: int(rng.integers(0, len(good_frame)))]
        if kind == 6:  # bit-flipped
            b = bytearray(good_frame)
            for _ in range(int(rng.integers(1, 8))):
                b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
            return bytes(b)
        if kind == 7:  # garbage
            return rng.bytes(int(rng.integers(1, 300)))
        if kind == 8:  # nonsense fields
            return wire.packb({**request, **{str(rng.choice(["k", "t", "id", "rng", "seed", "queued"])):
                                             rng.choice([-1, 2 ** 63, "x", None, 1.5])}})
        return wire.packb({"type": str(rng.choice(["hello", "act", "x"])), "protocol": int(rng.integers(3))})

    try:
        good = PolicyClient(s.url, token=token)
        ws = connect(s.url, additional_headers={"Authorization": f"Api-Key {token}"}, max_size=None).__enter__()
        ws.recv()
        ws.send(wire.packb({"type": "hello", "protocol": protocol.PROTOCOL}))
        ws.recv()
        sent = 0
        for i in range(10_000):
            try:
                ws.send(hostile(i))
                reply = ws.recv(timeout=30)
            except Exception:  # the server may close a connection that broke the protocol: open another
                ws.close()
                ws = connect(s.url, additional_headers={"Authorization": f"Api-Key {token}"}).__enter__()
                ws.recv()
                ws.send(wire.packb({"type": "hello", "protocol": protocol.PROTOCOL}))
                ws.recv()
                continue
            sent += 1
            if isinstance(reply, bytes):
                assert b"Traceback" not in reply
            if i % 500 == 0:
                assert np.array_equal(good.request(request)["actions"], expected)
        assert sent > 9000
        # oversized frames, slow clients, many connections, wrong tokens
        big = connect(s.url, additional_headers={"Authorization": f"Api-Key {token}"}, max_size=None).__enter__()
        big.recv()
        big.send(b"\0" * (33 * 2 ** 20))  # over the 32 MiB cap: the server closes that connection (1009)
        from websockets.exceptions import ConnectionClosed

        with pytest.raises(ConnectionClosed) as closed:
            big.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # "message too big"
        slow = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(8)]  # open, never speak
        for c in slow:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half a handshake
        many = []
        for _ in range(40):  # more than the 32 connections allowed
            try:
                many.append(PolicyClient(s.url, token=token, timeout_s=5))
            except ServerError as e:
                assert "503" in str(e) or "full" in str(e)
        for _ in range(20):
            with pytest.raises(ServerError, match="401"):
                PolicyClient(s.url, token=rng.bytes(8).hex())
        for c in many:
            c.close()
        for c in slow:
            c.close()
        assert np.array_equal(good.request(request)["actions"], expected)
        assert s.health()["ok"]
        print(f"fuzz: {sent} hostile messages answered without a traceback, the good client's actions checked "
              f"every 500; an oversized frame closed with 1009; 8 half-open and 40 extra connections, 20 wrong "
              f"tokens refused; the server up throughout (served {s.health()['served']})")
    finally:
        out = s.stop()
    assert s.proc.returncode == 0 and "Traceback" not in out.split("request failed")[0][-2000:]


@pytest.mark.slow
def test_bench_serve_runs_and_prints_its_side_by_side_figures(tmp_path):
    from conftest import run_cli

    r = run_cli("bench", "serve", "--quick", "--out", str(tmp_path / "serve.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "overhead p50" in r.stdout and "one by one" in r.stdout and "naive" in r.stdout
    result = json.loads((tmp_path / "serve.json").read_text())
    assert result["batching"]["mean_batch"] > 1  # clients sending at once did share calls
    assert set(result["pacing"]) == {"absolute", "naive"}


@pytest.mark.slow
def test_bench_serve_configs_times_each_config_at_act_batch_1_and_8_against_its_chunk(tmp_path):
    from conftest import run_cli

    r = run_cli("bench", "serve", "--configs", "--quick", "--out", str(tmp_path / "rt.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "rt.json").read_text())["realtime"]
    assert [row["config"] for row in rows] == ["ebt", "ptp_stage2"] and all(row["span_ms"] == 100 for row in rows)
    for row in rows:  # the verdict is the p99 at act batch 1 against a third of the chunk's span
        assert row["fits"] == (row["act_batch_1"]["p99"] <= row["span_ms"] / 3) and f"real time: {row['real_time']}" \
            in r.stdout
