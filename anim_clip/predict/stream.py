"""Decoding ahead of the encoder, across videos, in bounded memory.

Each video is decoded by one thread of a pool into a small queue of its own (``buffer`` items),
and at most ``workers`` videos are in flight: the image tower sees a continuous stream of segments
while decoders (decord and PyAV release the GIL) fill the queues behind it. What is held at once is
``workers × buffer`` decoded segments whatever the number or the length of the videos: a window
of a long video is decoded only when its queue has room, never the whole video at once.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Source = TypeVar("Source")
Put = Callable[[object], None]

_END = object()  # a video's last item
_POLL_S = 0.1  # how often a worker waiting on a full queue checks that the consumer is still there


class _Stopped(Exception):
    """The consumer went away (an error or Ctrl-C downstream): a worker stops decoding."""


class DecodeAhead(Generic[Source, Item]):
    """``decode(source, put)`` run for every source in ``workers`` threads, its items read back in
    source order as ``(source index, item)``; ``put`` blocks while the source's queue is full."""

    def __init__(self, decode: Callable[[Source, Put], None], sources: Sequence[Source], workers: int,
                 buffer: int = 2):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.decode, self.sources, self.workers, self.buffer = decode, sources, workers, buffer
        self._stop = threading.Event()

    def _run(self, source: Source, items: queue.Queue) -> None:
        def put(item: object) -> None:
            while True:
                try:
                    items.put(item, timeout=_POLL_S)
                    return
                except queue.Full:
                    if self._stop.is_set():
                        raise _Stopped from None

        try:
            self.decode(source, put)
            put(_END)
        except _Stopped:
            pass

    def __iter__(self) -> Iterator[tuple[int, Item]]:
        in_flight: deque[tuple[int, queue.Queue, Future]] = deque()
        pool = ThreadPoolExecutor(self.workers, "predict-decode")
        try:
            pending = iter(enumerate(self.sources))
            for index, source in pending:
                items: queue.Queue = queue.Queue(self.buffer)
                in_flight.append((index, items, pool.submit(self._run, source, items)))
                if len(in_flight) == self.workers:
                    yield from self._drain(*in_flight.popleft())
            while in_flight:
                yield from self._drain(*in_flight.popleft())
        finally:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _drain(index: int, items: queue.Queue, future: Future) -> Iterator[tuple[int, Item]]:
        """One video's items until its end; a worker's own bug surfaces here rather than hangs."""
        while True:
            try:
                item = items.get(timeout=_POLL_S)
            except queue.Empty:
                if future.done() and future.exception() is not None:
                    raise future.exception()
                continue
            if item is _END:
                return
            yield index, item
