"""audio_align.batching: items that arrive together run as one batch; a full queue refuses at once."""

import threading
import time

import pytest

from audio_align.batching import DynamicBatcher, Overloaded


class Gate:
    """A run_batch that records its batches and waits for ``release`` before answering."""

    def __init__(self, block: bool = True):
        self.batches, self.started, self.go = [], threading.Event(), threading.Event()
        if not block:
            self.go.set()

    def __call__(self, items):
        self.batches.append(list(items))
        self.started.set()
        assert self.go.wait(10)
        return [x * 10 if x >= 0 else ValueError(f"item {x}") for x in items]


def test_items_waiting_together_run_as_one_batch_in_order():
    gate = Gate()
    b = DynamicBatcher(gate, max_queue=16, window_s=0.0, max_items=8)
    first = b.submit(1)
    assert gate.started.wait(5)  # the worker holds item 1: the next ones queue up meanwhile
    rest = [b.submit(i) for i in (2, 3, 4, 5)]
    assert b.depth == 5
    gate.go.set()
    assert first.result(5) == 10 and [f.result(5) for f in rest] == [20, 30, 40, 50]
    assert gate.batches == [[1], [2, 3, 4, 5]]
    assert b.stats.batches == 2 and b.stats.items == 5
    b.close()


def test_the_window_collects_items_that_arrive_soon_after():
    gate = Gate(block=False)
    b = DynamicBatcher(gate, max_queue=16, window_s=0.3, max_items=8)
    futs = [b.submit(1)]
    time.sleep(0.05)
    futs.append(b.submit(2))
    assert [f.result(5) for f in futs] == [10, 20]
    assert gate.batches == [[1, 2]]
    b.close()


def test_max_items_and_max_cost_bound_a_batch():
    gate = Gate()
    b = DynamicBatcher(gate, max_queue=16, window_s=0.0, max_items=2)
    futs = [b.submit(0)]
    assert gate.started.wait(5)
    futs += [b.submit(i) for i in (1, 2, 3)]
    gate.go.set()
    [f.result(5) for f in futs]
    assert gate.batches == [[0], [1, 2], [3]]
    b.close()

    gate = Gate()
    b = DynamicBatcher(gate, max_queue=16, window_s=0.0, max_items=8, max_cost=5, cost=float)
    futs = [b.submit(0)]
    assert gate.started.wait(5)
    futs += [b.submit(i) for i in (2, 2, 3, 9)]  # 2+2 fit; 3 opens the next batch; 9 runs alone
    gate.go.set()
    assert [f.result(5) for f in futs] == [0, 20, 20, 30, 90]
    assert gate.batches == [[0], [2, 2], [3], [9]]
    b.close()


def test_a_full_queue_refuses_and_nothing_is_lost():
    gate = Gate()
    b = DynamicBatcher(gate, max_queue=2, window_s=0.0, max_items=8)
    running = b.submit(1)
    assert gate.started.wait(5)
    queued = [b.submit(2), b.submit(3)]
    with pytest.raises(Overloaded, match="2 requests are already waiting"):
        b.submit(4)
    gate.go.set()
    assert running.result(5) == 10 and [f.result(5) for f in queued] == [20, 30]
    b.close()


def test_one_failing_item_fails_alone_and_a_failing_batch_fails_all():
    b = DynamicBatcher(Gate(block=False), max_queue=8, window_s=0.2, max_items=8)
    good, bad = b.submit(1), b.submit(-1)
    assert good.result(5) == 10
    with pytest.raises(ValueError, match="item -1"):
        bad.result(5)
    b.close()

    def broken(items):
        raise RuntimeError("model crashed")

    b = DynamicBatcher(broken, max_queue=8, window_s=0.2, max_items=8)
    futs = [b.submit(1), b.submit(2)]
    for f in futs:
        with pytest.raises(RuntimeError, match="model crashed"):
            f.result(5)
    b.close()


def test_a_cancelled_item_is_dropped_before_its_batch_runs():
    gate = Gate()
    b = DynamicBatcher(gate, max_queue=8, window_s=0.0, max_items=8)
    b.submit(1)
    assert gate.started.wait(5)
    gone, kept = b.submit(2), b.submit(3)
    assert gone.cancel()  # its client gave up while it waited
    gate.go.set()
    assert kept.result(5) == 30
    assert gate.batches == [[1], [3]] and b.stats.cancelled == 1
    b.close()
