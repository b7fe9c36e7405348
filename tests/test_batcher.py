"""Calls from threads served in batches (`llm_stage.batcher`), with a fake batch function."""
import threading
import time

import pytest

from llm_stage.batcher import Batcher


def _calls(batcher: Batcher, requests: list) -> list:
    got: list = [None] * len(requests)

    def call(i):
        try:
            got[i] = batcher.submit(requests[i])
        except Exception as e:  # noqa: BLE001 - the test looks at it
            got[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a caller never got its answer"
    return got


def test_concurrent_calls_are_batched_and_each_gets_its_own_result():
    batches = []

    def square(batch):
        batches.append(list(batch))
        time.sleep(0.05)  # while one batch runs, the others queue up
        return [x * x for x in batch]

    got = _calls(Batcher(square, max_batch=4), list(range(10)))
    assert got == [x * x for x in range(10)]
    assert sorted(x for b in batches for x in b) == list(range(10))  # each once
    assert max(len(b) for b in batches) > 1 and all(len(b) <= 4 for b in batches)


def test_an_error_reaches_only_the_callers_of_its_batch():
    def fail_on_three(batch):
        time.sleep(0.02)
        if 3 in batch:
            raise ValueError("three")
        return batch

    got = _calls(Batcher(fail_on_three, max_batch=1), list(range(6)))
    assert isinstance(got[3], ValueError)
    assert [g for i, g in enumerate(got) if i != 3] == [0, 1, 2, 4, 5]


def test_a_batch_function_that_drops_results_is_an_error():
    got = _calls(Batcher(lambda batch: [], max_batch=8), [1, 2])
    assert all(isinstance(g, RuntimeError) and "gave 0 results" in str(g) for g in got)
    with pytest.raises(ValueError):
        Batcher(lambda b: b, max_batch=0)
