"""Dynamic batching: requests that arrive together run through the model as one batch.

One worker thread owns the model. Callers :meth:`DynamicBatcher.submit` an item and get a
``concurrent.futures.Future``; the worker takes the first waiting item, keeps collecting
for ``window_s`` (or until ``max_items`` items or ``max_cost`` cost units are in hand),
runs them together, and resolves each future with its own result or exception. The queue
is bounded: a full queue refuses the item at once (:class:`Overloaded`, an HTTP 429) rather
than letting latency grow without bound. A future cancelled before its batch starts (its
client timed out) is dropped from the batch.

    batcher = DynamicBatcher(run_batch, max_queue=64, window_s=0.01, max_items=16)
    result = batcher.submit(item).result()
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Overloaded(RuntimeError):
    """The queue is full: the item was not taken."""


@dataclass
class BatchStats:
    """What the worker has done: batches run, items in them, items dropped as cancelled."""

    batches: int = 0
    items: int = 0
    cancelled: int = 0


class DynamicBatcher(Generic[T]):
    """Collect items into batches for ``run_batch`` on one worker thread.

    ``run_batch(items)`` returns one result per item, in order; a result that is a
    ``BaseException`` becomes that item's exception (one bad item does not fail its batch),
    and an exception raised by ``run_batch`` itself fails every item of the batch.
    ``cost(item)`` (default 1) bounds a batch by ``max_cost`` as well as by ``max_items``;
    an item costing more than ``max_cost`` runs alone. ``max_items`` 1 turns batching off.
    """

    def __init__(self, run_batch: Callable[[list[T]], Sequence[Any]], *, max_queue: int = 64,
                 window_s: float = 0.01, max_items: int = 16, max_cost: float = float("inf"),
                 cost: Callable[[T], float] | None = None, name: str = "batcher") -> None:
        if max_queue < 1 or max_items < 1 or window_s < 0:
            raise ValueError(f"DynamicBatcher: need max_queue >= 1, max_items >= 1, window_s >= 0; got "
                             f"{max_queue}, {max_items}, {window_s}")
        self.run_batch, self.window_s, self.max_items, self.max_cost = run_batch, window_s, max_items, max_cost
        self.cost = cost or (lambda item: 1.0)
        self.stats = BatchStats()
        self._queue: queue.Queue[tuple[T, Future] | None] = queue.Queue(maxsize=max_queue)
        self._busy = 0  # items taken from the queue and not yet resolved
        self._carry: tuple[T, Future] | None = None  # taken, but too costly for the last batch: opens the next
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future:
        """Queue ``item``; raise :class:`Overloaded` at once if the queue is full."""
        fut: Future = Future()
        try:
            self._queue.put_nowait((item, fut))
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests are already waiting") from None
        return fut

    @property
    def depth(self) -> int:
        """Items waiting or running."""
        with self._lock:
            return self._queue.qsize() + self._busy + (self._carry is not None)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after what is queued (items queued later are never run)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self) -> list[tuple[T, Future]] | None:
        with self._lock:
            first, self._carry = self._carry, None
        if first is None:
            first = self._queue.get()
        if first is None:
            return None
        batch, cost = [first], self.cost(first[0])
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_items and cost < self.max_cost:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:  # closing: finish this batch, then stop
                self._queue.put(None)
                break
            c = self.cost(nxt[0])
            if cost + c > self.max_cost:  # would overflow: it opens the next batch
                with self._lock:
                    self._carry = nxt
                break
            batch.append(nxt)
            cost += c
        with self._lock:
            self._busy += len(batch)
        return batch

    def _work(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            self.stats.cancelled += len(batch) - len(live)
            try:
                if live:
                    self.stats.batches += 1
                    self.stats.items += len(live)
                    try:
                        results = list(self.run_batch([item for item, _ in live]))
                        if len(results) != len(live):
                            raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
                    except Exception as e:  # noqa: BLE001 - every caller gets the failure
                        log.exception("batch of %d failed", len(live))
                        results = [e] * len(live)
                    for (_, fut), res in zip(live, results):
                        if isinstance(res, BaseException):
                            fut.set_exception(res)
                        else:
                            fut.set_result(res)
            finally:
                with self._lock:
                    self._busy -= len(batch)
