"""The batching scheduler: every session's decode work, one model call at a time.

Sessions submit jobs; the scheduler gathers what is pending (waiting
`batch_window` when the model was idle, so near-simultaneous jobs share a
call), picks a batch with `pick_batch`, and runs it on the one model in a
worker thread while the event loop keeps serving sockets.

The policy is pure and lives in `pick_batch`:
- finals before partials before file windows, then session priority (high, normal, low), then
  sessions in turn: each session's oldest job before any session's second, so
  one session with a backlog (a fast sender) never takes the whole model
  from the others in its class; then arrival;
- at most `max_batch` jobs per call (1 is the unbatched baseline);
- a session has at most one queued partial: a newer one replaces it;
- a partial that waited longer than `partial_max_wait` is dropped, so under
  overload partials go first and finals keep their pace;
- file windows take only the capacity live sessions leave. While any live
  session is open, a file window never rides in a batch with live jobs (it
  would slow them), and file-only batches of at most `file_batch_with_live`
  windows start only while every live session is quiet (`live_quiet`: no
  utterance open, no decode pending): a final cannot be needed before the
  next utterance ends, so a short file batch is done before it is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Hashable

from stt_pod.stream import FILE, FINAL, PARTIAL, Job
from stt_pod.words import Word
from voxfleet.protocol import MODEL_SAMPLE_RATE as SR

log = logging.getLogger(__name__)

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
FILE_POLL_SECONDS = 0.05
"""How often file windows held back for speaking live sessions look again whether the sessions are quiet."""
KIND_RANK = {FINAL: 0, PARTIAL: 1, FILE: 2}

Decode = Callable[[list[Job]], list[list[Word]]]
"""The engine's decode: each job's words (a job is a `stt_pod.engine.Window`)."""


@dataclass(eq=False)
class Pending:
    key: Hashable  # the submitting session
    job: Job
    priority: str
    arrival: int
    enqueued: float
    future: asyncio.Future = field(repr=False)

    @property
    def order(self) -> tuple[int, int, int]:
        return KIND_RANK[self.job.kind], PRIORITY_RANK[self.priority], self.arrival


def pick_batch(queue: list[Pending], max_batch: int, now: float, partial_max_wait: float,
               max_file: int | None = None, mix_files: bool = True) -> tuple[list[Pending], list[Pending], list[Pending]]:
    """Split the queue into (batch to run now, stale partials to drop, the rest).

    At most `max_file` file windows; none beside live jobs unless `mix_files`.
    """
    stale = [p for p in queue if p.job.kind == PARTIAL and now - p.enqueued > partial_max_wait]
    live = sorted((p for p in queue if p not in stale), key=lambda p: p.order)
    turns: dict[tuple, int] = {}  # jobs each session already has ahead in its kind and priority class
    ranked = []
    for p in live:
        turn_key = (p.order[:2], p.key)
        turn = turns.get(turn_key, 0)
        turns[turn_key] = turn + 1
        ranked.append(((p.order[0], p.order[1], turn, p.arrival), p))
    ranked.sort(key=lambda item: item[0])
    fair = [p for _, p in ranked]
    batch = fair[:max_batch]
    files = [p for p in batch if p.job.kind == FILE]
    if not mix_files and len(files) < len(batch):
        max_file = 0
    if max_file is not None and len(files) > max_file:
        batch = batch[: len(batch) - len(files) + max_file]  # file windows rank last: trim from the end
    return batch, stale, fair[len(batch):]


class SchedulerClosed(Exception):
    """The scheduler stopped before the job ran."""


class BatchScheduler:
    def __init__(self, decode: Decode, max_batch: int = 8, batch_window: float = 0.025,
                 partial_max_wait: float = 1.5, metrics=None, clock: Callable[[], float] = time.monotonic,
                 file_batch_with_live: int = 1, live_quiet: Callable[[], bool] = lambda: True):
        self._decode = decode
        self.max_batch = max(1, max_batch)
        self.file_batch_with_live = file_batch_with_live
        self._live_quiet = live_quiet
        self._live_sessions = 0
        self.batch_window = batch_window
        self.partial_max_wait = partial_max_wait
        self._metrics = metrics
        self._clock = clock
        self._queue: list[Pending] = []
        self._arrivals = itertools.count()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None
        self._running: list[Pending] = []  # the batch in the model right now
        self._closed = False
        self.busy = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        self._closed = True
        unfinished = self._queue + self._running  # the task's own cleanup forgets the running batch
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for p in unfinished:
            if not p.future.done():
                p.future.set_exception(SchedulerClosed())
        self._queue.clear()
        self._running = []
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def live_sessions(self) -> int:
        """Open live sessions (the pod keeps this current): file windows yield to them."""
        return self._live_sessions

    @live_sessions.setter
    def live_sessions(self, count: int) -> None:
        self._live_sessions = count
        self._wake.set()  # file windows held back for live sessions may run now

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def submit(self, key: Hashable, job: Job, priority: str = "normal") -> asyncio.Future:
        """Queue a job; the future gets its words, or None if it was dropped."""
        future = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(SchedulerClosed())
            return future
        if job.kind == PARTIAL:
            self._drop(self._queued_partial(key), "replaced")
        self._queue.append(Pending(key, job, priority, next(self._arrivals), self._clock(), future))
        self._gauge()
        self._wake.set()
        return future

    def withdraw_partial(self, key: Hashable) -> bool:
        """Take back a session's partial that has not started; True if there was one."""
        pending = self._queued_partial(key)
        self._drop(pending, "withdrawn")
        return pending is not None

    def _queued_partial(self, key: Hashable) -> Pending | None:
        return next((p for p in self._queue if p.key == key and p.job.kind == PARTIAL), None)

    def _drop(self, pending: Pending | None, reason: str) -> None:
        if pending is None:
            return
        self._queue.remove(pending)
        if not pending.future.done():
            pending.future.set_result(None)
        if self._metrics:
            self._metrics.partials_dropped.labels(reason).inc()
        self._gauge()

    def _gauge(self) -> None:
        if self._metrics:
            self._metrics.queue_length.set(len(self._queue))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                if self.batch_window > 0:
                    await asyncio.sleep(self.batch_window)  # let near-simultaneous jobs join
            now = self._clock()
            live = self._live_sessions > 0
            max_file = (self.file_batch_with_live if self._live_quiet() else 0) if live else None
            batch, stale, rest = pick_batch(self._queue, self.max_batch, now, self.partial_max_wait, max_file,
                                            mix_files=not live)
            for p in stale:
                self._drop(p, "stale")
            self._queue = rest
            self._gauge()
            if not batch and not stale:  # only file windows, held back while live sessions speak
                self._wake.clear()
                try:  # new work or a session change wakes the loop; quiet is looked at again every FILE_POLL
                    await asyncio.wait_for(self._wake.wait(), FILE_POLL_SECONDS)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                continue
            self.busy = True
            self._running = batch
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self._decode, [p.job for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"decode returned {len(results)} results for {len(batch)} windows")
            except Exception as exc:  # the model failed: fail these jobs, keep serving
                log.exception("decode of a batch of %d failed", len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            finally:
                self.busy = False
                self._running = []
            self._observe(batch, now, time.monotonic() - started)
            for p, words in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(words)

    def _observe(self, batch: list[Pending], now: float, seconds: float) -> None:
        m = self._metrics
        if not m:
            return
        m.batch_size.observe(len(batch))
        m.compute_seconds.inc(seconds)
        for p in batch:
            m.queue_wait.labels(p.job.kind).observe(max(0.0, now - p.enqueued))
            m.decoded_seconds.labels(p.job.kind).inc(len(p.job.audio) / SR)
