"""Env slots in worker processes: each worker builds one env from its spec and runs the jobs the episode
loop gives it (a reset, a chunk of actions), so envs step in parallel while the policy runs batched in
the parent.

Workers start from a forkserver (a clean process, never a fork of one holding an OpenGL context or
torch threads: Diffusion Policy's AsyncVectorEnv crashes come from such forks) and render offscreen
with EGL. A worker that dies (a MuJoCo error, a segfault) or does not answer within ``timeout``
seconds surfaces as EnvDied, and the loop gives the episode a fresh worker. Messages are local IPC
between this process and its own children.
"""
from __future__ import annotations

import multiprocessing as mp
import time
import traceback

from robopolicy.eval.rollout import EnvDied, EnvJobs

JOB_TIMEOUT = 600.0  # seconds: a worker this slow is taken for hung


def _serve(conn, make_env, args, max_steps) -> None:
    try:
        jobs = EnvJobs(make_env(*args), max_steps)
    except Exception as e:  # reported: the parent turns it into one clear error
        conn.send(("error", f"building the env failed: {type(e).__name__}: {e}"))
        return
    conn.send(("ready", observation_shapes(jobs.env)))
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            break
        if kind == "close":
            break
        try:
            result = jobs(kind, payload)
            conn.send(("ok", result, (jobs.seconds, jobs.render_seconds)))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"))
    jobs.env.close()


def observation_shapes(env) -> dict[str, tuple[tuple[int, ...], str]]:
    """What the env's observations hold: key -> (shape, dtype)."""
    return {k: (tuple(space.shape), str(space.dtype)) for k, space in env.observation_space.spaces.items()}


class WorkerEnv:
    """An env slot in a worker process (same interface as rollout.LocalEnv)."""

    def __init__(self, make_env, args: tuple = (), max_steps: int | None = None, timeout: float = JOB_TIMEOUT):
        ctx = mp.get_context("forkserver")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, make_env, args, max_steps), daemon=True)
        self.process.start()
        child.close()
        self.timeout, self.timing = timeout, (0.0, 0.0)
        reply = self._receive()
        if reply[0] == "error":
            self.close()
            raise EnvDied(reply[1])
        self.observation_shapes = reply[1]

    def submit(self, kind: str, payload) -> None:
        try:
            self.conn.send((kind, payload))
        except (BrokenPipeError, OSError) as e:
            raise EnvDied(f"env worker {self.process.pid} is gone ({e})") from None

    def result(self):
        reply = self._receive()
        if reply[0] == "error":
            raise EnvDied(f"env worker {self.process.pid}: {reply[1]}")
        self.timing = reply[2]
        return reply[1]

    def _receive(self):
        deadline = time.monotonic() + self.timeout
        while not self.conn.poll(0.1):
            if not self.process.is_alive():
                code = self.process.exitcode
                raise EnvDied(f"env worker {self.process.pid} died (exit code {code}"
                              f"{', a crash' if code is not None and code < 0 else ''})")
            if time.monotonic() > deadline:
                self.process.kill()
                raise EnvDied(f"env worker {self.process.pid} did not answer in {self.timeout:.0f} s")
        try:
            return self.conn.recv()
        except (EOFError, OSError) as e:
            raise EnvDied(f"env worker {self.process.pid} died mid-reply ({e})") from None

    def close(self) -> None:
        try:
            self.conn.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
