"""The messages: what the server announces, what each kind of client sends, what comes back.

On connect the server sends its metadata (one frame, as openpi's server does). Then either
- robopolicy's client sends ``{"type": "hello", "protocol": PROTOCOL}`` and, per chunk, an ``act``
  request holding everything the policy needs: the observation window, its acquisition times in the
  client's clock, the executed and the still-queued actions (how many of these are committed: real-time
  chunking), a request id and the sampler's RNG state.
  The server keeps no state for it (it can serve many robots and lose none of them on a restart);
- or any other client (openpi's) sends bare observation dicts, one frame per key, and gets
  ``{"actions": ...}``; for a policy that needs history the server keeps that connection's history
  (``openpi.mode`` in the metadata says how to call it).
Errors are structured replies ``{"type": "error", "code", "message", "id"}``, never a traceback.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

import robopolicy
from robopolicy.data.windows import Window
from robopolicy.policy import Policy

PROTOCOL = 2  # 2: act requests may carry 'committed' and 'retry_above' (a server of 1 would ignore them)
RNG_BYTES = len(torch.Generator().get_state())  # a CPU generator's state


@dataclass(frozen=True)
class Sampling:
    """How a request wants its chunk drawn: K candidates; optionally, a retry when the best scores above
    ``retry_above`` (the verifier's score acted on: off unless asked)."""

    k: int = 1
    retry_above: float | None = None


class ProtocolError(ValueError):
    """A well-formed message that asks for something the protocol does not allow."""

    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.code = code


def needs_history(policy: Policy) -> bool:
    """Whether a chunk depends on more than the current frame (then someone must keep the episode)."""
    d = policy.cfg.data
    return d.n_obs > 1 or d.past_act or bool(getattr(policy.head, "predicts_past", False))


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


def act_request(window: Window, rid: int, k: int = 1, rng: np.ndarray | None = None, seed: int | None = None,
                obs_times_ns: np.ndarray | None = None, retry_above: float | None = None) -> dict:
    """The ``act`` message for a window (``History.window()``): what the server needs, nothing it keeps."""
    msg = {"type": "act", "id": rid, "t": window.t, "obs": window.obs, "k": k}
    if retry_above is not None:
        msg["retry_above"] = float(retry_above)
    for name in ("actions_before_frames", "actions_at_past_frames", "queued"):
        if getattr(window, name) is not None:
            msg[name] = np.asarray(getattr(window, name), np.float32)
    if window.committed:
        msg["committed"] = int(window.committed)
    if rng is not None:
        msg["rng"] = rng
    if seed is not None:
        msg["seed"] = seed
    if obs_times_ns is not None:
        msg["obs_times_ns"] = np.asarray(obs_times_ns, np.int64)
    return msg


def _array(msg: dict, name: str, dtype=np.float32, required: bool = False) -> np.ndarray | None:
    x = msg.get(name)
    if x is None:
        if required:
            raise ProtocolError(f"act request lacks {name!r}")
        return None
    if not isinstance(x, np.ndarray):
        raise ProtocolError(f"{name!r} must be an array, got {type(x).__name__}")
    return cast(x, dtype, name)


def cast(x: np.ndarray, dtype, name: str) -> np.ndarray:
    """``x`` as ``dtype`` when nothing is lost that matters: float64 -> float32 when finite and in range;
    integers -> floats; images stay uint8. Anything else is refused, naming the key."""
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    if dtype == np.uint8:
        raise ProtocolError(f"{name!r} must be uint8 (images are uint8 HWC), got {x.dtype}", "bad_dtype")
    if dtype.kind == "f" and x.dtype.kind in "fiu":
        if x.dtype.kind == "f" and x.size and (not np.isfinite(x).all() or np.abs(x).max() > np.finfo(dtype).max):
            raise ProtocolError(f"{name!r} holds NaN, inf or values beyond {dtype}", "bad_value")
        return x.astype(dtype)
    raise ProtocolError(f"{name!r} must be {dtype}, got {x.dtype}", "bad_dtype")


def obs_dtype(policy: Policy, key: str):
    return np.uint8 if policy.schema[key].is_image else np.float32


def parse_act(policy: Policy, msg: dict) -> tuple[int, Window, Sampling, torch.Generator, np.ndarray | None]:
    """An act request -> (id, window, sampling, generator, obs times). Shapes are the policy's to check."""
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
    k = msg.get("k", 1)
    if not isinstance(t, int) or not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 64:
        raise ProtocolError("'t' must be an integer and 'k' an integer in [1, 64]")
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
    retry = msg.get("retry_above")
    if retry is not None and (not isinstance(retry, int | float) or isinstance(retry, bool)
                              or not math.isfinite(retry)):
        raise ProtocolError("'retry_above' must be a finite number (the score above which a chunk is drawn again)")
    return rid, window, Sampling(k, None if retry is None else float(retry)), generator(msg.get("rng"),
                                                                                       msg.get("seed")), times


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


def error_reply(message: str, code: str = "bad_request", rid=None) -> dict:
    return {"type": "error", "code": code, "message": message, "id": rid if isinstance(rid, int) else None}
