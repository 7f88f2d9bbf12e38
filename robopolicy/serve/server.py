"""``robopolicy serve``: a policy behind a websocket, for robopolicy's control loop and openpi's client.

What it guarantees (and the anchors do not, ../shared/reference/serving_and_real_arms.md §2-§5):
- loopback by default; any other bind needs a token, and a missing or wrong token is refused in the
  HTTP handshake, before a byte of a message is decoded;
- msgpack with typed arrays on a dtype whitelist, never pickle; caps on frame size, array size and
  connections;
- inference never runs in the event loop (``/healthz`` answers while a chunk is computed); requests
  that arrive together share one batched call, each row bit-exact with what it gets alone;
- a bad message gets an error reply naming the problem, never a traceback, and never takes the server
  down; SIGTERM stops accepting, lets in-flight chunks finish, closes connections and exits 0.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import http
import json
import logging
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch

from robopolicy.acting import Acting
from robopolicy.errors import ConfigError, RobopolicyError
from robopolicy.policy import ACT_BATCH, Policy
from robopolicy.serve import protocol, service, wire
from robopolicy.serve.engine import InferenceEngine
from robopolicy.serve.frames import FrameCache, frame_cache

log = logging.getLogger("robopolicy.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # required for any non-loopback bind; clients send "Authorization: Api-Key <token>"
    max_frame_bytes: int = 32 * 2 ** 20  # per message
    max_connections: int = 32
    drain_s: float = 10.0  # on SIGTERM: how long in-flight chunks may take to finish
    # rows per network call (padded): every call has this many, so a row never depends on its batch. 8 (as
    # `robopolicy eval`) batches up to 8 robots per call; 1 is the lowest latency for one robot (its rows then
    # differ from eval's batch-8 arithmetic in the last bits, still deterministic)
    act_batch: int = ACT_BATCH


def check_bind(host: str, token: str | None) -> None:
    if host not in LOOPBACK and not token:
        raise ConfigError(f"binding {host} exposes the policy to the network: pass --token-file F (clients send "
                          "'Authorization: Api-Key <token>'), or keep the default 127.0.0.1 and reach it through "
                          "an SSH tunnel (ssh -L 8000:127.0.0.1:8000 robot-host)")


def check_port(host: str, port: int) -> None:
    """Fail before the policy loads when the port is taken (serve() binds again, and says the same if it lost
    a race)."""
    import socket

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: {e.strerror}; pass an address of this machine") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds: TIME_WAIT is no conflict
            try:
                s.bind(address)
            except OSError as e:
                raise bind_error(host, port, e) from None


def bind_error(host: str, port: int, e: OSError) -> ConfigError:
    if e.errno == errno.EADDRINUSE:
        return ConfigError(f"port {port} on {host} is in use: pass another --port, or stop what holds it "
                           f"(`ss -ltnp 'sport = :{port}'` names it)")
    return ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}): pass another --host or --port")


class _OpenpiSession:
    """A client that sends bare observations (openpi's): its episode lives here, on the server."""

    def __init__(self, policy: Policy):
        self.policy, self.history = policy, policy.history()
        self.started, self.queue, self.last = False, [], None
        self.frames = frame_cache(policy)
        self.generator = torch.Generator().manual_seed(0)

    def reset(self) -> None:
        self.started, self.queue, self.last = False, [], None
        self.generator = torch.Generator().manual_seed(0)

    def frame(self, msg: dict) -> dict[str, np.ndarray]:
        frame = {}
        for key in self.policy.obs_keys:
            if key not in msg:
                raise protocol.ProtocolError(f"the observation lacks {key!r}; this policy reads "
                                             f"{self.policy.obs_keys} (shapes in the metadata)", "bad_obs")
            x = msg[key]
            if not isinstance(x, np.ndarray):
                x = np.asarray(x) if isinstance(x, list | int | float) else None
                if x is None or x.dtype.kind not in "biuf":
                    raise protocol.ProtocolError(f"observation {key!r} must be an array", "bad_obs")
            x = protocol.cast(x, service.obs_dtype(self.policy, key), key)
            want = tuple(self.policy.schema[key].shape)
            if x.shape != want:
                raise protocol.ProtocolError(f"observation {key!r} has shape {x.shape}, this policy takes one frame "
                                             f"of {want}", "bad_shape")
            frame[key] = np.array(x)  # own copy: the message's buffer is not ours to keep
        return frame


class PolicyServer:
    def __init__(self, policy: Policy, cfg: ServerConfig, checkpoint_hash: str | None = None):
        check_bind(cfg.host, cfg.token)
        self.policy, self.cfg = policy, cfg
        self.metadata = service.metadata(policy, checkpoint_hash)
        self.per_tick = self.metadata["openpi"]["mode"] == "per_tick"
        self.connections = 0
        if cfg.act_batch < 1:
            raise ConfigError(f"act_batch must be >= 1, got {cfg.act_batch}")
        self.metadata["act_batch"] = cfg.act_batch
        self.engine = InferenceEngine(policy, max_batch=cfg.act_batch, peers=lambda: self.connections - 1)
        self.served = 0
        self.port: int | None = None  # the bound port (cfg.port 0: the OS picks one)

    # ------------------------------------------------------------------ HTTP: health and the door
    def _process_request(self, connection, request):
        if request.path == "/healthz":
            body = json.dumps({"ok": True, "connections": self.connections, "in_flight": self.engine.busy,
                               "served": self.served})
            return connection.respond(http.HTTPStatus.OK, body + "\n")
        if self.cfg.token is not None:
            got = request.headers.get("Authorization", "")
            scheme, _, key = got.partition(" ")
            if scheme not in ("Api-Key", "Bearer") or not hmac.compare_digest(key.strip().encode(),
                                                                               self.cfg.token.encode()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                          "a valid 'Authorization: Api-Key <token>' header is required\n")
        if self.connections >= self.cfg.max_connections:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"the server holds its maximum of {self.cfg.max_connections} connections\n")
        return None

    # ------------------------------------------------------------------ one connection
    async def _handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        self.connections += 1
        kind, session = None, None  # "robopolicy" after a hello; else openpi-style
        frames = frame_cache(self.policy)
        try:
            await ws.send(wire.packb(self.metadata))
            async for frame in ws:
                t0 = time.perf_counter()
                msg, rid = None, None
                try:
                    msg = wire.unpackb(frame, self.cfg.max_frame_bytes)
                    if not isinstance(msg, dict):
                        raise protocol.ProtocolError("a message is a map (dict)")
                    rid = msg.get("id")
                    if msg.get("type") == "hello":
                        if msg.get("protocol") != protocol.PROTOCOL:
                            raise protocol.ProtocolError(f"this server speaks protocol {protocol.PROTOCOL}, the "
                                                         f"client {msg.get('protocol')!r}: upgrade the older side",
                                                         "protocol")
                        kind = "robopolicy"
                        reply = {"type": "hello", "protocol": protocol.PROTOCOL}
                    elif kind == "robopolicy":
                        if msg.get("type") != "act":
                            raise protocol.ProtocolError(f"unknown message type {msg.get('type')!r}; send 'act'")
                        reply = await self._act(msg, t0, frames)
                    else:
                        session = session or _OpenpiSession(self.policy)
                        reply = await self._openpi(session, msg, t0)
                except (wire.WireError, protocol.ProtocolError, RobopolicyError) as e:
                    reply = protocol.error_reply(str(e), getattr(e, "code", "bad_request"), rid)
                except Exception as e:  # noqa: BLE001 - a bug of ours: logged here, one line to the client
                    log.exception("request failed")
                    reply = protocol.error_reply(f"internal error ({type(e).__name__}); the server logged it",
                                                 "internal", rid)
                if reply.get("type") == "error" and kind != "robopolicy":
                    await ws.send(f"robopolicy server: {reply['message']}")  # openpi's client raises on text
                else:
                    await ws.send(wire.packb(reply))
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1

    async def _act(self, msg: dict, t0: float, frames: FrameCache | None = None) -> dict:
        rid, window, acting, generator, times = service.parse_act(self.policy, msg)
        done = await self.engine.submit(window, acting, generator, frames)
        self.served += 1
        due = int(times[-1]) if times is not None else None  # the first action is the latest frame's
        return service.chunk_reply(rid, done.chunk, done.generator, due, {
            "queue_ms": done.queue_ms, "infer_ms": done.infer_ms, "batch": done.batch, "encoded_frames": done.encoded,
            "total_ms": (time.perf_counter() - t0) * 1000})

    async def _openpi(self, session: _OpenpiSession, msg: dict, t0: float) -> dict:
        if msg.get("reset") or msg.get("__ctrl__") in ("episode_start", "episode_end"):
            session.reset()
            if not any(k in msg for k in self.policy.obs_keys):
                return {"ok": True, "reset": True}
        frame = session.frame(msg)
        if not session.started or not self.per_tick:
            session.history.start(frame)
            session.started, session.queue = True, []
        else:
            session.history.record(session.last, frame)
        infer_ms = 0.0
        if not session.queue:
            done = await self.engine.submit(session.history.window(self.policy.obs_keys), Acting(),
                                            session.generator, session.frames)
            session.generator, infer_ms = done.generator, done.infer_ms
            session.history.plan(done.chunk.plan, done.chunk.t)
            session.queue = list(done.chunk.actions)
        self.served += 1
        if self.per_tick:
            session.last = session.queue.pop(0)
            actions = session.last[None]
        else:
            actions, session.queue = np.stack(session.queue), []
        total = (time.perf_counter() - t0) * 1000
        return {"actions": actions.astype(np.float32), "n_actions": len(actions),
                "policy_timing": {"infer_ms": infer_ms}, "server_timing": {"infer_ms": infer_ms, "total_ms": total}}

    # ------------------------------------------------------------------ lifetime
    async def serve(self, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or SIGTERM/SIGINT when serving from the main thread)."""
        from websockets.asyncio.server import serve

        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        handled = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
            except (RuntimeError, ValueError):  # not the main thread: the caller stops us with ``stop``
                pass
        try:
            listening = serve(self._handler, self.cfg.host, self.cfg.port, process_request=self._process_request,
                              max_size=self.cfg.max_frame_bytes, max_queue=4, compression=None,
                              ping_interval=20, ping_timeout=20, close_timeout=5)
            try:
                await listening  # binds: a taken port is one clear error, not a traceback
            except OSError as e:
                raise bind_error(self.cfg.host, self.cfg.port, e) from None
            async with listening as server:  # (already bound: entering does not bind again)
                self.port = server.sockets[0].getsockname()[1]
                log.info("serving %s on ws://%s:%d", self.metadata["head"], self.cfg.host, self.port)
                if ready is not None:
                    ready.set()
                await stop.wait()
                server.close(close_connections=False)  # no new connections; in-flight chunks finish
                deadline = time.monotonic() + self.cfg.drain_s
                while self.engine.busy and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)  # their replies go out
                for connection in list(server.connections):
                    await connection.close(1001, "server shutting down")
                await server.wait_closed()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            self.engine.close()

