"""Dynamic batching: concurrent requests share one forward pass.

Hand-written (about 80 lines) because neither FastAPI nor uvicorn batches, and the serving engines that do
(Triton, TorchServe, Ray Serve) are whole servers of their own. The rule is Triton's dynamic batcher
(a batch closes at ``max_batch`` items or ``max_wait`` after its first item), with one refinement: the
batcher waits only while more requests are on their way (admitted but still being received or decoded),
so a lone request never sits out the delay, and forwards run back to back, so while one runs the next
batch fills by itself.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class _Item:
    x: Tensor
    future: asyncio.Future


class DynamicBatcher:
    """``await submit(x)`` -> this input's row of ``forward(torch.stack(batch))``.

    ``forward`` runs in ``executor`` (one worker: one forward at a time, never two racing for the cores).
    ``expect()`` / ``arrived()`` bracket a request's receive-and-decode stage so the batcher knows whether
    waiting for company is worth it. ``on_batch(size, seconds)`` and ``on_depth(n)`` feed the metrics.
    """

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        executor: concurrent.futures.Executor,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.010,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.forward, self.executor = forward, executor
        self.max_batch, self.max_wait_s = max(1, int(max_batch)), max(0.0, float(max_wait_s))
        self.on_batch, self.on_depth = on_batch, on_depth
        self.forwards = 0  # batches run so far
        self._items: collections.deque[_Item] = collections.deque()
        self._incoming = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ request side (event loop)
    def expect(self) -> None:
        self._incoming += 1

    def arrived(self) -> None:
        """The expected request will not be submitted after all (bad input, client gone)."""
        self._incoming -= 1
        self._wake.set()

    def submit(self, x: Tensor) -> asyncio.Future:
        """Queue one preprocessed input (a request that called ``expect()``); the future gets its logits."""
        fut = asyncio.get_running_loop().create_future()
        self._items.append(_Item(x, fut))
        self._incoming -= 1
        self._depth()
        self._wake.set()
        return fut

    @property
    def queued(self) -> int:
        """Preprocessed inputs waiting for a forward pass."""
        return len(self._items)

    @property
    def incoming(self) -> int:
        """Requests admitted but still being received or decoded."""
        return self._incoming

    # ------------------------------------------------------------------ batching loop
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="convnext-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._items:
                self._wake.clear()
                await self._wake.wait()
            deadline = loop.time() + self.max_wait_s
            while len(self._items) < self.max_batch and self._incoming > 0:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
            batch = [it for it in batch if not it.future.done()]  # a client that went away
            self._depth()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                x = torch.stack([it.x for it in batch])
                logits = await loop.run_in_executor(self.executor, self.forward, x)
            except Exception as e:  # the model failed: every waiting request learns it, the loop lives on
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            self.forwards += 1
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)
            for i, it in enumerate(batch):
                if not it.future.done():
                    it.future.set_result(logits[i])

    def _depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(len(self._items))
