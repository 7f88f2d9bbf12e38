"""Inference off the event loop: one thread runs the policy; requests that arrive together share a call.

The server's event loop only decodes, checks and answers; ``submit`` hands a checked request to this
thread and returns an asyncio future. The thread takes every request waiting when it becomes free and
acts on them in one batched ``Policy.act`` (per way of acting: K, retry, ...), which gives each row exactly
what it would get alone, so batching never changes an answer. A request the policy refuses fails alone: the batch is
checked row by row first. Image policies: each connection's frame cache (serve/frames.py) supplies the
features of frames it has seen, so only new frames are encoded.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from robopolicy.acting import Acting
from robopolicy.data.windows import Window
from robopolicy.errors import RobopolicyError
from robopolicy.policy import ACT_BATCH, ActionChunk, Policy
from robopolicy.serve.frames import FrameCache, attach_features

log = logging.getLogger("robopolicy.serve")


@dataclass
class Job:
    window: Window
    acting: Acting
    generator: torch.Generator
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cache: FrameCache | None = None  # the connection's per-frame features (image policies)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Done:
    chunk: ActionChunk
    generator: torch.Generator  # advanced by this chunk's draws (a stateless client sends it back next time)
    queue_ms: float  # waiting for the inference thread
    infer_ms: float  # the batched call this job was part of
    batch: int  # rows in that call
    encoded: int | None = None  # frames the encoder ran on for this call (None: no frame cache)


class InferenceEngine:
    """The policy on its own thread. ``submit`` (from the event loop) -> future of Done."""

    def __init__(self, policy: Policy, max_batch: int = ACT_BATCH, gather_s: float = 0.002, peers=lambda: 0):
        """``gather_s``: when ``peers()`` (other connections) is non-zero, how long a free thread waits for
        their requests to join the first one (robots that ask at about the same time share a call); alone,
        a request never waits."""
        self.policy, self.max_batch, self.gather_s, self.peers = policy, max_batch, gather_s, peers
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._busy = 0  # jobs submitted and not yet answered
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="robopolicy-inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> int:
        return self._busy

    def submit(self, window: Window, acting: Acting, generator: torch.Generator,
               cache: FrameCache | None = None) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._busy += 1
        self._jobs.put(Job(window, acting, generator, future, loop, cache))
        return future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        torch.set_grad_enabled(False)  # EBT turns it on where it needs it
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.perf_counter() + (self.gather_s if self.peers() > 0 else 0.0)
            while len(jobs) < self.max_batch:  # whatever else is waiting (or arrives within gather_s) joins
                try:
                    nxt = self._jobs.get(timeout=max(deadline - time.perf_counter(), 0.0)) \
                        if deadline > time.perf_counter() else self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._jobs.put(None)
                    break
                jobs.append(nxt)
            for acting in dict.fromkeys(j.acting for j in jobs):  # one call per way of acting
                self._act([j for j in jobs if j.acting == acting], acting)

    def _act(self, jobs: list[Job], acting: Acting) -> None:
        ok = []
        for job in jobs:  # a window the policy refuses is that request's error, not its batch-mates'
            try:
                self.policy.check_window(job.window)
                ok.append(job)
            except RobopolicyError as e:
                self._answer(job, error=e)
        if not ok:
            return
        t0 = time.perf_counter()
        try:
            # every connection of an image policy keeps a frame cache: its rows skip the frames it has seen
            caches = [j.cache for j in ok]
            encoded = attach_features(self.policy, [j.window for j in ok], caches) \
                if all(c is not None for c in caches) else None
            chunks = self.policy.act([j.window for j in ok], acting, generators=[j.generator for j in ok],
                                     act_batch=self.max_batch)
        except Exception as e:  # noqa: BLE001 - the server stays up; each caller gets a one-line error
            log.exception("inference failed")
            for job in ok:
                self._answer(job, error=e)
            return
        infer_ms = (time.perf_counter() - t0) * 1000
        for job, chunk in zip(ok, chunks):
            self._answer(job, Done(chunk, job.generator, (t0 - job.queued_at) * 1000, infer_ms, len(ok), encoded))

    def _answer(self, job: Job, done: Done | None = None, error: Exception | None = None) -> None:
        with self._lock:
            self._busy -= 1

        def deliver():
            if job.future.done():  # the connection went away meanwhile
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(done)
        try:
            job.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the event loop has closed: nobody waits for this answer
            pass
