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

This module is both sides' (numpy only: a robot's computer needs no torch); what the server makes of a
request, and the metadata it announces, is serve/service.py.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np

from robopolicy.acting import Acting
from robopolicy.data.windows import Window
from robopolicy.errors import ConfigError

ACTING = tuple(f.name for f in fields(Acting))  # the act request's fields that are acting options
PROTOCOL = 3  # 3: act requests carry every acting option (robopolicy/acting.py); 2 knew only k and retry_above


class ProtocolError(ValueError):
    """A well-formed message that asks for something the protocol does not allow."""

    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.code = code


def act_request(window: Window, rid: int, acting: Acting = Acting(), rng: np.ndarray | None = None,
                seed: int | None = None, obs_times_ns: np.ndarray | None = None) -> dict:
    """The ``act`` message for a window (``History.window()``): what the server needs, nothing it keeps. The
    sampler's RNG travels as the state bytes the server sent back last time (``rng``: an exact continuation),
    or, for an episode's first request, as a ``seed``."""
    msg = {"type": "act", "id": rid, "t": window.t, "obs": window.obs, "k": acting.k, **acting.to_dict()}
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


def parse_acting(msg: dict) -> Acting:
    """The acting options of an act request (its top-level fields named as in Acting)."""
    try:
        return Acting.from_dict({name: msg[name] for name in ACTING if name in msg})
    except ConfigError as e:
        raise ProtocolError(str(e)) from None


def read_token(path: str | Path | None) -> str | None:
    """The shared secret of a token file (the server checks it, the client sends it in the handshake)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--token-file {path}: no such file (write a long random token into it, e.g. "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))' > token`)")
    token = path.read_text().strip()
    if len(token) < 16:
        raise ConfigError(f"--token-file {path}: the token is {len(token)} characters; use at least 16")
    return token


def error_reply(message: str, code: str = "bad_request", rid=None) -> dict:
    return {"type": "error", "code": code, "message": message, "id": rid if isinstance(rid, int) else None}
