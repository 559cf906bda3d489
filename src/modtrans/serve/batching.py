"""Dynamic micro-batching: concurrent requests for one model merged into one call.

Each :class:`MicroBatcher` owns a queue and a task that takes the first waiting item,
collects more — up to ``max_batch``, waiting at most ``max_wait`` seconds and only while
other requests are in flight, so a lone request is never delayed — and runs the batched
function once in a worker thread, under ``torch.inference_mode``. A batch that fails is
retried item by item, so one bad item fails only its own request.

:class:`Admission` bounds how many requests are in the service at once; past the bound a
request is refused with :class:`Overloaded` (the service answers 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any

import torch

logger = logging.getLogger(__name__)

BatchFn = Callable[[Sequence[Any]], Sequence[Any]]


class Overloaded(RuntimeError):
    """The service holds as many requests as it admits; try again after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Admission:
    """A bound on requests in flight: :meth:`enter` refuses one past ``limit``."""

    def __init__(self, limit: int, retry_after: int, what: str) -> None:
        self.limit, self.retry_after, self.what = limit, retry_after, what
        self.active = 0

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Hold one place for the duration of the block, or raise :class:`Overloaded`."""
        if self.active >= self.limit:
            raise Overloaded(f"the service is busy ({self.active} {self.what} in flight, the "
                             f"most it admits); retry in {self.retry_after} s", self.retry_after)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


def call_in_inference_mode(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with autograd off, as every model call of the service runs."""
    with torch.inference_mode():
        return fn(*args)


class MicroBatcher:
    """Merge concurrent calls of ``fn`` (items → one result per item, in order).

    Args:
        name: what the batches are of (metrics and logs).
        fn: the batched function; it runs in ``executor``.
        executor: the worker thread(s) running model calls.
        max_batch, max_wait: the most items merged and the longest wait for more.
        busy: how many requests are in flight; a batch waits for more only while that
            exceeds what it holds.
        observe: called with (name, batch size, seconds) after each batch.
    """

    def __init__(self, name: str, fn: BatchFn, executor: Executor, *, max_batch: int,
                 max_wait: float, busy: Callable[[], int],
                 observe: Callable[[str, int, float], None] | None = None) -> None:
        self.name, self.fn, self.executor = name, fn, executor
        self.max_batch, self.max_wait, self.busy, self.observe = max_batch, max_wait, busy, observe
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def __call__(self, item: Any) -> Any:
        """The result of ``fn`` for ``item``, computed in a batch with whatever else waits."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._serve(), name=f"batcher-{self.name}")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def close(self) -> None:
        """Stop the batching task (after the batch it runs); what still waits is cancelled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.cancel()

    async def _serve(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self.busy() <= len(batch):
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [(item, future) for item, future in batch if not future.done()]
            if live:
                await self._run(live)

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        items = [item for item, _ in batch]
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self.executor, call_in_inference_mode,
                                                 self.fn, items)
            if len(results) != len(items):
                raise RuntimeError(f"{self.name} returned {len(results)} results for "
                                   f"{len(items)} items")
            outcomes: list[tuple[Any, BaseException | None]] = [(r, None) for r in results]
        except Exception as e:
            if len(items) == 1:
                outcomes = [(None, e)]
            else:
                logger.warning("a batch of %d %s failed (%s); running them one by one",
                               len(items), self.name, e)
                outcomes = [await self._one(item) for item in items]
        if self.observe is not None:
            self.observe(self.name, len(items), time.perf_counter() - start)
        for (_, future), (result, error) in zip(batch, outcomes, strict=True):
            if future.done():  # the request was cancelled (its client went away)
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    async def _one(self, item: Any) -> tuple[Any, BaseException | None]:
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, call_in_inference_mode, self.fn, [item])
            return results[0], None
        except Exception as e:
            return None, e
