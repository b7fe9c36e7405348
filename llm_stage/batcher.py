"""Calls from many threads served as batches: what lets one local model answer many traces at
once. A caller that finds no batch running becomes the runner: it takes everything queued (up
to `max_batch`), runs it as one batch, hands each caller its answer and goes on until the
queue is empty. Callers that arrive while a batch runs queue up for the next one, so batches
grow with the load and nobody waits for a timer."""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


class Batcher(Generic[Request, Result]):
    def __init__(self, run_batch: Callable[[list[Request]], list[Result]], max_batch: int):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.run_batch, self.max_batch = run_batch, max_batch
        self._lock = threading.Lock()
        self._queue: list[tuple[Request, Future]] = []
        self._running = False

    def submit(self, request: Request) -> Result:
        """`request`'s result, computed in a batch with whatever else is queued; an error of
        its batch is raised in every caller of that batch."""
        future: Future = Future()
        with self._lock:
            self._queue.append((request, future))
            runner = not self._running
            self._running = True
        if runner:
            self._run_queue()
        return future.result()

    def _run_queue(self) -> None:
        batch: list[tuple[Request, Future]] = []
        try:
            while True:
                with self._lock:
                    batch = self._queue[:self.max_batch]
                    del self._queue[:self.max_batch]
                    if not batch:
                        self._running = False
                        return
                try:
                    results = self.run_batch([r for r, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
                except Exception as e:  # noqa: BLE001 - each caller of the batch raises it
                    for _, f in batch:
                        f.set_exception(e)
                    continue
                for (_, f), r in zip(batch, results):
                    f.set_result(r)
        except BaseException as e:  # an interrupt: nobody queued may wait for ever
            with self._lock:
                rest, self._queue, self._running = self._queue, [], False
            for _, f in batch + rest:
                if not f.done():
                    f.set_exception(e)
            raise
