"""robopolicy's client, and the link the control loop talks to a policy through.

``PolicyClient`` is a plain blocking client (connect, metadata, hello, ``act``). The loop never calls
it directly: a ``RemoteLink`` runs it on a thread, so the loop submits a request and picks the reply up
on a later tick, never waiting on the network. ``serve.service.LocalLink`` is the same link to a policy in
this process. Both carry the same request and reply dicts (serve/protocol.py). No torch here: the robot's
side of the wire needs numpy, msgpack and websockets only.
"""
from __future__ import annotations

import queue
import threading
import time

from robopolicy.errors import RobopolicyError
from robopolicy.serve import protocol, wire


class ServerError(RobopolicyError):
    """The server refused a request or could not be reached; the text says why."""


class PolicyClient:
    def __init__(self, uri: str, token: str | None = None, timeout_s: float = 10.0):
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {token}"} if token else None
        self.timeout_s = timeout_s
        try:
            # entered, as websockets 17 asks (its own context management closes it in close())
            self.ws = connect(uri, additional_headers=headers, compression=None, max_size=64 * 2 ** 20,
                              open_timeout=timeout_s, close_timeout=1).__enter__()
        except InvalidStatus as e:
            status = e.response.status_code
            hint = {401: "wrong or missing token: pass --token-file with the server's token",
                    503: "the server is full: try again later"}.get(status, "")
            raise ServerError(f"{uri} refused the connection (HTTP {status}) {hint}".strip()) from None
        except (OSError, TimeoutError) as e:
            raise ServerError(f"cannot reach {uri} ({e}); is `robopolicy serve` running there?") from None
        self.metadata = self._recv()
        if self.metadata.get("server") != "robopolicy":
            raise ServerError(f"{uri} is not a robopolicy server (metadata {str(self.metadata)[:80]})")
        self.ws.send(wire.packb({"type": "hello", "protocol": protocol.PROTOCOL}))
        hello = self._recv()
        if hello.get("type") != "hello":
            raise ServerError(f"the server refused the hello: {hello.get('message', hello)}")

    def _recv(self, timeout_s: float | None = None) -> dict:
        frame = self.ws.recv(timeout=timeout_s or self.timeout_s)
        if isinstance(frame, str):
            raise ServerError(frame)
        return wire.unpackb(frame)

    def request(self, msg: dict, timeout_s: float | None = None) -> dict:
        self.ws.send(wire.packb(msg))
        return self._recv(timeout_s)

    def close(self) -> None:
        self.ws.close()


class Link:
    """Requests in, replies out, on a worker thread; ``lost`` says why the link died, if it did."""

    def __init__(self):
        self._out: queue.Queue[dict | None] = queue.Queue()
        self._in: queue.Queue[dict] = queue.Queue()
        self._held: dict[int, dict] = {}
        self.lost: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="robopolicy-link")
        self._thread.start()

    def submit(self, request: dict) -> None:
        self._out.put(request)

    def replies(self) -> list[dict]:
        """Every reply that has arrived (each stamped ``arrived_ns``, monotonic), oldest first."""
        out = list(self._held.values())
        self._held.clear()
        while True:
            try:
                out.append(self._in.get_nowait())
            except queue.Empty:
                return out

    def wait(self, rid: int, timeout_s: float) -> dict | None:
        """Block until reply ``rid`` arrives (lockstep runs); others that arrive meanwhile are kept."""
        deadline = time.monotonic() + timeout_s
        while self.lost is None or not self._in.empty():
            try:
                reply = self._in.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return None
            if reply.get("id") == rid:
                return reply
            self._held[reply.get("id")] = reply
        return None

    def _run(self) -> None:
        try:
            self._open()
            while (request := self._out.get()) is not None:
                reply = self._call(request)
                reply["arrived_ns"] = time.monotonic_ns()
                self._in.put(reply)
        except Exception as e:  # noqa: BLE001 - any failure of the link is reported, never raised into the loop
            self.lost = str(e) if isinstance(e, RobopolicyError) else f"{type(e).__name__}: {e}"

    def close(self) -> None:
        self._out.put(None)
        self._thread.join(timeout=5)


class RemoteLink(Link):
    def __init__(self, uri: str, token: str | None = None, timeout_s: float = 10.0):
        self.uri, self.token, self.timeout_s = uri, token, timeout_s
        self.client: PolicyClient | None = None
        self._ready = threading.Event()
        super().__init__()
        self._ready.wait(timeout_s + 1)
        if self.client is None:
            raise ServerError(self.lost or f"cannot reach {uri}")
        self.metadata = self.client.metadata

    def _open(self) -> None:
        try:
            self.client = PolicyClient(self.uri, self.token, self.timeout_s)
        finally:
            self._ready.set()

    def _call(self, request: dict) -> dict:
        return self.client.request(request, self.timeout_s)

    def close(self) -> None:
        super().close()
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
