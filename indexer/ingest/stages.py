"""Pipeline stages on threads: `ordered_map` runs a function over a lazy stream on a small thread pool and
yields the results in input order, with a bounded number in flight.

The write path uses it twice: decoding (walk -> decode, several threads) and inference (decode -> encode,
one thread per inference lane), so that the main thread's store writes, the decoders and the image tower
all overlap. The work releases the GIL (libjpeg, Pillow's resampling, ONNX Runtime, torch), so threads are
enough; a process pool would copy every batch of pixels.
"""
from __future__ import annotations

import itertools
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 2, prefetch: int = 32,
                name: str = "xmodal-stage", initializer: Callable[[], None] | None = None) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in input order, computed on `workers` threads.

    `items` is consumed lazily on the calling thread; at most `prefetch` calls are submitted and not yet
    yielded, so memory stays bounded. Results that are ready at the head are yielded without waiting; the
    stream waits only when the window is full. Exceptions from `items` propagate at once, those from `fn`
    when their result's turn comes. Closing the generator early cancels calls that have not started, waits
    for running ones and closes `items` (when it is a generator: a chain of stages closes in order, on the
    closing thread, not whenever the garbage collector gets to it). `initializer` runs once on each worker
    thread before its first call."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if prefetch < 1:
        raise ValueError(f"prefetch must be at least 1, got {prefetch}")
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=initializer)
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            while pending and (pending[0].done() or len(pending) >= prefetch):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()


class LaneIds:
    """A small stable number per thread (0, 1, ...) in order of first use: which inference lane (e.g. which
    single-threaded ONNX Runtime session) a pool thread drives."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._next = itertools.count()

    def __call__(self) -> int:
        lane = getattr(self._local, "lane", None)
        if lane is None:
            lane = self._local.lane = next(self._next)  # count() is atomic under the GIL
        return lane
