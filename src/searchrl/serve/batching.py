"""Micro-batching of scoring requests: requests wait briefly to share one forward pass; a full queue
or a wait past its deadline raises Busy, which the endpoints turn into 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi import HTTPException


class Busy(Exception):
    """The scorer cannot take or finish a request in time; the message says which (-> 503)."""


class QueueFull(Busy):
    pass


class QueueTimeout(Busy):
    pass


def busy_response(e: Busy) -> HTTPException:
    return HTTPException(503, str(e), headers={"Retry-After": "1"})


class MicroBatcher:
    """Bounded request queue + one worker that scores queued requests together (see the module docstring)."""

    def __init__(self, score_many, max_batch_pairs: int = 64, max_wait_ms: float = 2.0, max_queue: int = 128,
                 timeout_s: float | None = None):
        self.score_many = score_many  # list[(query, products)] -> list[list[result]]
        self.max_batch_pairs, self.max_wait = max_batch_pairs, max_wait_ms / 1000
        self.timeout_s = timeout_s  # longest submit() waits for its result (None: no limit)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self.batches = 0  # micro-batches run (for /healthz and tests)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        while not self.queue.empty():  # left only when a SIGTERM drain ran out of time: their requests are gone
            self.queue.get_nowait()[2].cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, query: str, products: list[dict]) -> list[dict]:
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((query, products, fut))
        except asyncio.QueueFull:
            raise QueueFull(f"server busy: {self.queue.maxsize} requests already queued; retry later") from None
        try:
            async with asyncio.timeout(self.timeout_s):
                return await fut  # on timeout fut is cancelled, and the worker skips it
        except TimeoutError:
            raise QueueTimeout(f"server busy: not scored within {self.timeout_s:g} s (queue_timeout_s); "
                               "retry later") from None

    def _drain(self, batch: list, pairs: int) -> int:
        while pairs < self.max_batch_pairs and not self.queue.empty():
            item = self.queue.get_nowait()
            if not item[2].done():  # done while queued: timed out, nobody waits for it
                batch.append(item)
                pairs += len(item[1])
        return pairs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            if batch[0][2].done():
                continue
            pairs = self._drain(batch, len(batch[0][1]))
            deadline = loop.time() + self.max_wait
            while pairs < self.max_batch_pairs and loop.time() < deadline:
                await asyncio.sleep(min(0.0005, max(deadline - loop.time(), 0)))
                pairs = self._drain(batch, pairs)
            try:
                results = await loop.run_in_executor(self.executor, self.score_many, [(q, p) for q, p, _ in batch])
            except Exception as e:  # a failed batch fails its requests, not the server
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            for (*_, fut), res in zip(batch, results):
                if not fut.done():  # the client may have gone away
                    fut.set_result(res)
