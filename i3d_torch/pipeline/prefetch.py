"""Prefetching: decode ahead in a background thread while the model computes.

:class:`Prefetcher` drains an iterable (the batches of :func:`i3d_torch.pipeline.batches.produce_batches`)
in a thread into a bounded queue, hands any exception over to the consumer, and measures how long the
consumer waited for input, which the applications report as ``timing.wait_s``.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

__all__ = ["PREFETCH_DEPTH", "Prefetcher"]

#: Bounded queue between the decoding thread and the model: enough to hide decode jitter, small enough
#: that a few 64-frame batches (about 40 MB each at 224x224) stay in memory.
PREFETCH_DEPTH = 4


class Prefetcher:
    """Iterate ``iterable`` in a background thread through a bounded queue; ``last_wait_s`` is how long
    the latest ``next`` blocked (the consumer starving for input)."""

    _END = object()

    def __init__(self, iterable: Iterable[Any], depth: int = PREFETCH_DEPTH):
        self._iterable = iterable
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.last_wait_s = 0.0
        self._thread = threading.Thread(target=self._work, name="i3d-decode", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            for item in self._iterable:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(_Raised(exc))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        while True:
            waited = time.perf_counter()
            item = self._queue.get()
            self.last_wait_s = time.perf_counter() - waited
            if item is self._END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class _Raised:
    exc: BaseException
