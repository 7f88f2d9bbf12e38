"""What a policy server does with a message, minus the socket: the metadata it announces, an ``act`` request
parsed into a window, its acting options and its RNG, the chunk reply; and ``LocalLink``, that handling in this
process (tests and the in-process side of ``bench serve`` use it). The messages themselves: protocol.py."""
from __future__ import annotations

import time

import numpy as np
import torch

import robopolicy
from robopolicy.acting import Acting
from robopolicy.data.windows import Window
from robopolicy.errors import RobopolicyError
from robopolicy.policy import Policy
from robopolicy.serve.client import Link
from robopolicy.serve.protocol import PROTOCOL, ProtocolError, cast, error_reply, parse_acting

RNG_BYTES = len(torch.Generator().get_state())  # a CPU generator's state


def needs_history(policy: Policy) -> bool:
    """Whether a chunk depends on more than the current frame (then someone must keep the episode)."""
    d = policy.cfg.data
    return d.n_obs > 1 or d.past_act or policy.head.capabilities.predicts_past


def metadata(policy: Policy, checkpoint_hash: str | None = None) -> dict:
    d, task = policy.cfg.data, policy.task or {}
    per_tick = needs_history(policy)
    return {
        "server": "robopolicy", "version": robopolicy.__version__, "protocol": PROTOCOL,
        "checkpoint": checkpoint_hash, "head": policy.cfg.policy.head, "task": task.get("task"),
        "control_hz": task.get("control_hz"), "action_semantics": task.get("action_semantics"),
        "env_spec": task.get("env_spec"),
        "obs_keys": list(policy.obs_keys),
        "obs_shapes": {k: list(policy.schema[k].shape) for k in policy.obs_keys},
        "obs_dtypes": {k: str(np.dtype(policy.schema[k].dtype)) for k in policy.obs_keys},
        "action_dim": policy.action_dim, "n_obs": d.n_obs, "stride": d.stride, "horizon": d.horizon,
        "n_action_steps": d.n_action_steps, "past_act": d.past_act,
        "openpi": {
            "mode": "per_tick" if per_tick else "chunk",
            "action_horizon": 1 if per_tick else d.n_action_steps,
            "note": ("this policy reads the episode's history: call infer once per control tick with that tick's "
                     "observation (the server keeps the history and the chunk queue, assumes the action it "
                     "returned was executed, and answers one action); send {'reset': True} at a new episode, "
                     "or reconnect") if per_tick else
                    f"call infer once per chunk; it answers n_action_steps={d.n_action_steps} actions"},
    }


def _array(msg: dict, name: str, dtype=np.float32, required: bool = False) -> np.ndarray | None:
    x = msg.get(name)
    if x is None:
        if required:
            raise ProtocolError(f"act request lacks {name!r}")
        return None
    if not isinstance(x, np.ndarray):
        raise ProtocolError(f"{name!r} must be an array, got {type(x).__name__}")
    return cast(x, dtype, name)


def obs_dtype(policy: Policy, key: str):
    return np.uint8 if policy.schema[key].is_image else np.float32


def parse_act(policy: Policy, msg: dict) -> tuple[int, Window, Acting, torch.Generator, np.ndarray | None]:
    """An act request -> (id, window, acting options, generator, obs times). Shapes are the policy's to check."""
    rid = msg.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ProtocolError("act request needs an integer 'id'")
    obs = msg.get("obs")
    if not isinstance(obs, dict):
        raise ProtocolError("act request needs 'obs': a map of observation key -> (To, ...) array")
    window_obs = {}
    for key in policy.obs_keys:
        if key not in obs:
            raise ProtocolError(f"'obs' lacks {key!r}; this policy reads {policy.obs_keys}", "bad_obs")
        window_obs[key] = _array(obs, key, obs_dtype(policy, key), required=True)
    t = msg.get("t", 0)
    if not isinstance(t, int) or isinstance(t, bool):
        raise ProtocolError("'t' must be an integer")
    acting = parse_acting(msg)
    committed = msg.get("committed", 0)
    if not isinstance(committed, int) or isinstance(committed, bool):
        raise ProtocolError("'committed' must be an integer: how many queued actions the chunk must keep")
    window = Window(window_obs, t, _array(msg, "actions_before_frames"), _array(msg, "actions_at_past_frames"),
                    _array(msg, "queued"), committed=committed)
    times = msg.get("obs_times_ns")
    if times is not None and not (isinstance(times, np.ndarray) and times.dtype.kind in "iu"
                                  and times.shape == (policy.cfg.data.n_obs,)):
        raise ProtocolError(f"'obs_times_ns' must be {policy.cfg.data.n_obs} integers (the frames' acquisition "
                            "times, client clock)")
    return rid, window, acting, generator(msg.get("rng"), msg.get("seed")), times


def generator(state, seed) -> torch.Generator:
    """The sampler's RNG: the client's saved state (exact continuation), else a seed, else seed 0."""
    g = torch.Generator()
    if state is not None:
        if not isinstance(state, np.ndarray) or state.dtype != np.uint8 or state.shape != (RNG_BYTES,):
            raise ProtocolError(f"'rng' must be the {RNG_BYTES} uint8 bytes of a torch CPU generator's state")
        try:
            g.set_state(torch.from_numpy(state.copy()))
        except RuntimeError:
            raise ProtocolError("'rng' is not a valid generator state") from None
    elif seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
            raise ProtocolError("'seed' must be a non-negative integer")
        g.manual_seed(seed)
    else:
        g.manual_seed(0)
    return g


def chunk_reply(rid: int, chunk, generator: torch.Generator, due_ns: int | None, timing: dict) -> dict:
    return {"type": "chunk", "id": rid, "t": chunk.t, "actions": chunk.actions.astype(np.float32),
            "n_actions": len(chunk.actions), "plan": chunk.plan.astype(np.float32), "due_ns": due_ns,
            "scores": None if chunk.scores is None else chunk.scores.astype(np.float32), "method": chunk.method,
            "chosen": chunk.chosen, "retried": chunk.retried, "rng": generator.get_state().numpy(),
            "server_timing": timing}


class LocalLink(Link):
    """The server's handling of an ``act`` request, in this process (no socket, no batching)."""

    def __init__(self, policy, latency_s: float = 0.0):
        self.policy, self.latency_s = policy, latency_s
        self.metadata = metadata(policy)
        super().__init__()

    def _open(self) -> None:
        pass

    def _call(self, request: dict) -> dict:
        t0 = time.perf_counter()
        try:
            rid, window, acting, generator, times = parse_act(self.policy, request)
            chunk = self.policy.act([window], acting, generators=[generator])[0]
        except (ProtocolError, RobopolicyError) as e:
            return error_reply(str(e), getattr(e, "code", "bad_request"), request.get("id"))
        ms = (time.perf_counter() - t0) * 1000
        if self.latency_s:
            time.sleep(self.latency_s)
        return chunk_reply(rid, chunk, generator, None if times is None else int(times[-1]),
                                    {"queue_ms": 0.0, "infer_ms": ms, "batch": 1, "total_ms": ms})
