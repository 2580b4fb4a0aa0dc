"""Keep an open-loop arrival schedule under a concurrency cap: the dispatcher that the
in-process client (client.py) and the open-loop shard workers (sharding.py) share.

A dispatcher sleeps until the next request is due (an absolute `time.perf_counter()` time,
CLOCK_MONOTONIC on Linux, one clock for every process on the host) and hands it to a task
that waits for a free slot under the cap. The task learns whether the cap made it wait, so
each record can tell the client's own send lag apart from queueing under the cap (t_slot).

Two caps: `LocalCap` (one process: an asyncio semaphore) and `SharedCap` (worker processes:
one in-flight counter in shared memory for the whole run, so at most batch-size requests are
in flight overall and a due request waits only when all of them are busy, whichever worker
holds them; a waiting worker polls the counter every `poll` seconds, which only ever lengthens
cap waits, never the send lag).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

#: how often a worker whose requests wait for a slot looks at the shared in-flight counter
SHARED_CAP_POLL_S = 0.0005


class Cap(Protocol):
    async def acquire(self) -> bool:
        """Take a slot; True when the cap made the caller wait for it."""
        ...

    def release(self) -> None: ...


class LocalCap:
    """At most `limit` in flight within this process."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(max(1, limit))

    async def acquire(self) -> bool:
        capped = self._slots.locked()
        await self._slots.acquire()
        return capped

    def release(self) -> None:
        self._slots.release()


class SharedCap:
    """At most `limit` in flight across processes: `inflight` is a multiprocessing Value('q')
    every worker increments when it sends and decrements when a request finishes. This
    worker's own waiters queue in order (an asyncio lock) so only one of them polls."""

    def __init__(self, inflight: Any, limit: int, poll: float = SHARED_CAP_POLL_S) -> None:
        self._inflight, self._limit, self._poll = inflight, max(1, limit), poll
        self._queue = asyncio.Lock()

    def _try_take(self) -> bool:
        with self._inflight.get_lock():
            if self._inflight.value >= self._limit:
                return False
            self._inflight.value += 1
            return True

    async def acquire(self) -> bool:
        if not self._queue.locked() and self._try_take():
            return False
        async with self._queue:
            while not self._try_take():
                await asyncio.sleep(self._poll)
        return True

    def release(self) -> None:
        with self._inflight.get_lock():
            self._inflight.value -= 1


async def keep_schedule(dues: Sequence[float], cap: Cap,
                        send: Callable[[int, float, float | None], Awaitable[None]]) -> None:
    """Start `send(k, due_k, t_slot)` at each absolute time due_k (perf_counter), with at most
    the cap in flight; t_slot is when the slot came free when the cap made it wait, else None."""

    async def one(k: int, due: float) -> None:
        capped = await cap.acquire()
        try:
            await send(k, due, time.perf_counter() if capped else None)
        finally:
            cap.release()

    tasks = []
    for k, due in enumerate(dues):
        while (wait := due - time.perf_counter()) > 0:  # asyncio may wake a clock tick early
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(one(k, due)))
    await asyncio.gather(*tasks)
