"""Batching across sessions for ``genctl serve``: requests pending at the same time share one policy call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("genctl.serve")

@dataclass
class Job:
    hist: np.ndarray  # (n_obs_steps, obs_dim) float32
    fut: asyncio.Future


class Batcher:
    """Gathers pending requests into one ``predict_chunk`` call, run in a single worker thread (a policy
    object is not assumed thread-safe, and one batched call beats several concurrent ones on CPU and GPU)."""

    def __init__(self, backend: Any, window_s: float, max_batch: int,
                 sessions: Callable[[], int] = lambda: 1):
        self.backend, self.window_s, self.max_batch = backend, window_s, max_batch
        self.sessions = sessions  # () -> open sessions: nobody else can join a batch once all of them asked
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="genctl-policy")
        self.batches: list[int] = []  # sizes of the calls made (for stats)
        self.waiting: set[asyncio.Future] = set()

    async def infer(self, hist: np.ndarray) -> tuple[np.ndarray, int]:
        fut = asyncio.get_running_loop().create_future()
        self.waiting.add(fut)
        try:
            await self.queue.put(Job(hist, fut))
            return await fut
        finally:
            self.waiting.discard(fut)

    def close(self) -> None:
        """Release every request still waiting (their handlers end), so the server can shut down."""
        for fut in list(self.waiting):
            fut.cancel()
        self.pool.shutdown(wait=False)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self.backend.predict_chunk(x), np.float32)
        want = (len(x), self.backend.horizon, self.backend.action_dim)
        if out.shape != want:
            raise RuntimeError(f"policy returned actions of shape {out.shape}, expected {want}")
        return out

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            if self.window_s > 0 and 1 + self.queue.qsize() < min(self.sessions(), self.max_batch):
                # sleep, not wait_for(queue.get()): a timed-out get can drop an item on Python 3.11
                await asyncio.sleep(self.window_s)
            while len(jobs) < self.max_batch and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            jobs = [j for j in jobs if not j.fut.done()]  # the handler was cancelled (server closing)
            if not jobs:
                continue
            self.batches.append(len(jobs))
            try:
                out = await loop.run_in_executor(self.pool, self._predict, np.stack([j.hist for j in jobs]))
            except Exception as e:  # reported to each waiting client; the server keeps going
                log.warning("policy call failed: %s: %s", type(e).__name__, e)
                for j in jobs:
                    if not j.fut.done():
                        j.fut.set_exception(e)
                continue
            for i, j in enumerate(jobs):
                if not j.fut.done():
                    j.fut.set_result((out[i], len(jobs)))
