"""Continuous batching (reidloop/serving/batcher.py): real asyncio, a real one-thread pool, no timing asserts.

The model call is gated by a threading.Event, so "requests that arrive while a batch runs" is a fact the test
arranges, not a race it hopes to win."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from reidloop.serving.batcher import ContinuousBatcher


class GatedModel:
    """Doubles its inputs; each call blocks until the test opens the gate, and records its batch."""

    def __init__(self, fail_on: object = None) -> None:
        self.calls: list[list] = []
        self.entered = threading.Semaphore(0)  # released once per call that started
        self.gate = threading.Semaphore(0)  # one release lets one call finish
        self.fail_on = fail_on

    def __call__(self, batch: list) -> list:
        self.calls.append(list(batch))
        self.entered.release()
        self.gate.acquire()
        if self.fail_on in batch:
            raise ValueError(f"bad item {self.fail_on!r}")
        return [2 * x for x in batch]


async def started(model: GatedModel) -> None:
    """Wait (without blocking the event loop) until the model has entered one more call."""
    await asyncio.get_running_loop().run_in_executor(None, model.entered.acquire)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1) as p:
        yield p


def test_a_lone_request_runs_at_once_alone(pool):
    model = GatedModel()
    batcher = ContinuousBatcher(model, pool, max_batch_size=8)

    async def main():
        task = asyncio.ensure_future(batcher(3))
        await started(model)  # the model was entered with no other request in sight: nothing waited for company
        model.gate.release()
        return await task

    assert run(main()) == 6 and model.calls == [[3]]


def test_requests_arriving_during_a_batch_form_the_next_batch_up_to_the_maximum(pool):
    model = GatedModel()
    batcher = ContinuousBatcher(model, pool, max_batch_size=4)

    async def main():
        first = asyncio.ensure_future(batcher(0))
        await started(model)
        later = [asyncio.ensure_future(batcher(i)) for i in range(1, 11)]  # 10 arrive while the model is busy
        await asyncio.sleep(0)  # let them queue (a yield, not a wait for time)
        for _ in range(4):
            model.gate.release()
        return await first, await asyncio.gather(*later)

    first, later = run(main())
    assert first == 0 and later == [2 * i for i in range(1, 11)]  # each caller gets its own answer, in order
    assert model.calls == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert (batcher.batches, batcher.items) == (4, 11)


def test_a_failing_batch_fails_its_requests_only_and_the_batcher_goes_on(pool):
    model = GatedModel(fail_on=2)
    batcher = ContinuousBatcher(model, pool, max_batch_size=2)

    async def main():
        first = asyncio.ensure_future(batcher(0))
        await started(model)
        rest = [asyncio.ensure_future(batcher(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        for _ in range(3):
            model.gate.release()
        return await first, await asyncio.gather(*rest, return_exceptions=True)

    first, (one, two, three) = run(main())
    assert model.calls == [[0], [1, 2], [3]]
    assert first == 0 and three == 6
    assert isinstance(one, ValueError) and isinstance(two, ValueError) and "bad item 2" in str(two)


def test_a_request_cancelled_while_queued_is_not_computed(pool):
    model = GatedModel()
    batcher = ContinuousBatcher(model, pool, max_batch_size=8)

    async def main():
        first = asyncio.ensure_future(batcher(0))
        await started(model)
        gone, kept = asyncio.ensure_future(batcher(1)), asyncio.ensure_future(batcher(2))
        await asyncio.sleep(0)
        gone.cancel()  # e.g. its client disconnected or its request timed out
        model.gate.release()
        model.gate.release()
        return await first, await kept, gone.cancelled()

    assert run(main()) == (0, 4, True)
    assert model.calls == [[0], [2]]


def test_a_wrong_number_of_results_is_an_error_for_every_request_of_the_batch(pool):
    batcher = ContinuousBatcher(lambda batch: [0], pool, max_batch_size=4)

    async def main():
        return await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, RuntimeError) and "1 results for 2 items" in str(r) for r in results)


def test_max_wait_lets_a_batch_with_room_wait_for_company(pool):
    """With max_wait_s the first request waits for others (Serve's @serve.batch behaviour); without it, it
    would have run alone. A full batch runs without waiting out the rest of max_wait_s."""
    model = GatedModel()
    batcher = ContinuousBatcher(model, pool, max_batch_size=2, max_wait_s=3600.0)

    async def main():
        first = asyncio.ensure_future(batcher(1))
        for _ in range(5):
            await asyncio.sleep(0)
        assert model.calls == []  # still waiting for company
        second = asyncio.ensure_future(batcher(2))  # fills the batch: it runs now
        await started(model)
        model.gate.release()
        return await first, await second

    assert run(main()) == (2, 4)
    assert model.calls == [[1, 2]]


@pytest.mark.parametrize("kwargs, fragment", [({"max_batch_size": 0}, "max_batch_size: 0"),
                                              ({"max_batch_size": 2.5}, "max_batch_size: 2.5"),
                                              ({"max_wait_s": -1.0}, "max_wait_s: -1.0")])
def test_bad_settings_are_named(pool, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ContinuousBatcher(lambda b: b, pool, **kwargs)
