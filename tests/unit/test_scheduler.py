"""stt_pod.scheduler: the pure batch policy, and the batching loop with a fake model."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from stt_pod.metrics import PodMetrics
from stt_pod.scheduler import BatchScheduler, Pending, SchedulerClosed, pick_batch
from stt_pod.stream import FILE, FINAL, PARTIAL, Job
from stt_pod.words import Word

WAIT = 5.0  # a safety net so a broken scheduler fails the test instead of hanging it


def job(kind: str, marker: int) -> Job:
    """A job whose audio says which it is: every sample equals `marker`."""
    return Job(kind, marker * 100, marker * 100 + 10, np.full(10, marker, dtype=np.float32))


def pending(name: str, kind: str, priority: str = "normal", arrival: int = 0, enqueued: float = 0.0) -> Pending:
    return Pending(key=name, job=job(kind, arrival), priority=priority, arrival=arrival, enqueued=enqueued, future=None)


# --- pick_batch ---------------------------------------------------------------------------


def names(ps: list[Pending]) -> list[str]:
    return [p.key for p in ps]


def test_finals_go_before_partials_whatever_their_priority_or_arrival():
    queue = [
        pending("partial-high", PARTIAL, "high", arrival=0),
        pending("final-low", FINAL, "low", arrival=1),
        pending("partial-normal", PARTIAL, "normal", arrival=2),
        pending("final-normal", FINAL, "normal", arrival=3),
    ]
    batch, stale, rest = pick_batch(queue, max_batch=8, now=0.0, partial_max_wait=10.0)
    assert names(batch) == ["final-normal", "final-low", "partial-high", "partial-normal"]
    assert stale == [] and rest == []


def test_file_windows_take_only_the_slots_live_work_leaves():
    queue = [pending("file-a", FILE, "high", arrival=0), pending("file-b", FILE, "high", arrival=1),
             pending("partial", PARTIAL, "low", arrival=2), pending("final", FINAL, "low", arrival=3)]
    batch, _, rest = pick_batch(queue, max_batch=3, now=0.0, partial_max_wait=10.0)
    assert names(batch) == ["final", "partial", "file-a"]
    assert names(rest) == ["file-b"]


def test_with_live_sessions_open_a_batch_holds_at_most_max_file_windows():
    queue = [pending(f"file-{i}", FILE, arrival=i) for i in range(4)] + [pending("final", FINAL, arrival=9)]
    batch, _, rest = pick_batch(queue, max_batch=8, now=0.0, partial_max_wait=10.0, max_file=1)
    assert names(batch) == ["final", "file-0"]
    assert names(rest) == ["file-1", "file-2", "file-3"]
    alone, _, _ = pick_batch(queue, max_batch=8, now=0.0, partial_max_wait=10.0)
    assert len(alone) == 5


def test_while_live_sessions_are_open_file_windows_never_ride_with_live_jobs():
    queue = [pending("final", FINAL, arrival=0), pending("file", FILE, arrival=1)]
    batch, _, rest = pick_batch(queue, max_batch=8, now=0.0, partial_max_wait=10.0, max_file=1, mix_files=False)
    assert names(batch) == ["final"] and names(rest) == ["file"]
    batch, _, _ = pick_batch(rest, max_batch=8, now=0.0, partial_max_wait=10.0, max_file=1, mix_files=False)
    assert names(batch) == ["file"]  # alone, it may run


def test_file_windows_are_never_dropped_as_stale():
    queue = [pending("file", FILE, arrival=0, enqueued=0.0)]
    batch, stale, _ = pick_batch(queue, max_batch=8, now=100.0, partial_max_wait=1.0)
    assert names(batch) == ["file"] and stale == []


def test_priority_then_arrival_within_a_kind():
    queue = [
        pending("low-0", FINAL, "low", arrival=0),
        pending("normal-1", FINAL, "normal", arrival=1),
        pending("high-2", FINAL, "high", arrival=2),
        pending("normal-3", FINAL, "normal", arrival=3),
        pending("high-4", FINAL, "high", arrival=4),
    ]
    batch, _, _ = pick_batch(list(reversed(queue)), max_batch=8, now=0.0, partial_max_wait=10.0)
    assert names(batch) == ["high-2", "high-4", "normal-1", "normal-3", "low-0"]


def test_max_batch_cuts_and_the_rest_keeps_its_order():
    queue = [pending(f"f{i}", FINAL, arrival=i) for i in range(5)] + [pending("p", PARTIAL, arrival=5)]
    batch, stale, rest = pick_batch(queue, max_batch=2, now=0.0, partial_max_wait=10.0)
    assert names(batch) == ["f0", "f1"]
    assert names(rest) == ["f2", "f3", "f4", "p"]
    assert stale == []


def test_sessions_take_turns_within_a_class_so_a_backlog_does_not_starve_the_others():
    greedy = [pending("fast", FINAL, arrival=i) for i in range(6)]  # a fast sender's queued finals
    queue = greedy + [pending("live-a", FINAL, arrival=6), pending("live-b", FINAL, arrival=7),
                      pending("live-a", FINAL, arrival=8)]
    batch, _, rest = pick_batch(queue, max_batch=4, now=0.0, partial_max_wait=10.0)
    assert names(batch) == ["fast", "live-a", "live-b", "fast"]
    assert [p.arrival for p in batch] == [0, 6, 7, 1]  # each session's own jobs stay in order
    assert names(rest) == ["live-a", "fast", "fast", "fast", "fast"]


def test_turns_never_override_kind_or_priority():
    queue = [pending("a", FINAL, "low", arrival=0), pending("a", FINAL, "high", arrival=1),
             pending("a", FINAL, "high", arrival=2), pending("b", PARTIAL, "high", arrival=3)]
    batch, _, _ = pick_batch(queue, max_batch=8, now=0.0, partial_max_wait=10.0)
    assert [(p.key, p.priority, p.job.kind) for p in batch] == [
        ("a", "high", FINAL), ("a", "high", FINAL), ("a", "low", FINAL), ("b", "high", PARTIAL)]


def test_max_batch_one_is_the_unbatched_baseline():
    queue = [pending("p", PARTIAL, "high", arrival=0), pending("f", FINAL, "low", arrival=1)]
    batch, _, rest = pick_batch(queue, max_batch=1, now=0.0, partial_max_wait=10.0)
    assert names(batch) == ["f"] and names(rest) == ["p"]


def test_stale_partials_are_dropped_and_finals_never_are():
    queue = [
        pending("old-partial", PARTIAL, arrival=0, enqueued=0.0),
        pending("old-final", FINAL, arrival=1, enqueued=0.0),
        pending("new-partial", PARTIAL, arrival=2, enqueued=9.0),
    ]
    batch, stale, rest = pick_batch(queue, max_batch=8, now=10.0, partial_max_wait=1.5)
    assert names(stale) == ["old-partial"]
    assert names(batch) == ["old-final", "new-partial"]
    assert rest == []


def test_a_partial_exactly_at_its_max_wait_is_still_live():
    queue = [pending("p", PARTIAL, enqueued=8.5)]
    batch, stale, _ = pick_batch(queue, max_batch=8, now=10.0, partial_max_wait=1.5)
    assert names(batch) == ["p"] and stale == []


def test_stale_partials_do_not_take_batch_slots():
    queue = [pending("stale", PARTIAL, "high", arrival=0, enqueued=0.0), pending("live", PARTIAL, "low", arrival=1, enqueued=10.0)]
    batch, stale, _ = pick_batch(queue, max_batch=1, now=10.0, partial_max_wait=1.0)
    assert names(batch) == ["live"] and names(stale) == ["stale"]


def test_empty_queue():
    assert pick_batch([], max_batch=8, now=0.0, partial_max_wait=1.0) == ([], [], [])


# --- BatchScheduler ----------------------------------------------------------------------------


class FakeModel:
    """Records every batch it is given (as the markers of its windows) and answers each window."""

    def __init__(self, fail_on: set[int] = frozenset()) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on  # markers whose batch raises
        self.threads: set[str] = set()

    def __call__(self, jobs: list[Job]) -> list[list[Word]]:
        markers = [int(j.audio[0]) for j in jobs]
        self.batches.append(markers)
        self.threads.add(threading.current_thread().name)
        if self.fail_on & set(markers):
            raise RuntimeError(f"model failed on {markers}")
        return [[Word(f" m{m}", 0.0, 0.5)] for m in markers]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make():
    made: list[BatchScheduler] = []

    def factory(model: FakeModel, **kw) -> BatchScheduler:
        kw.setdefault("batch_window", 0.01)
        scheduler = BatchScheduler(model, **kw)
        made.append(scheduler)
        return scheduler

    yield factory
    for scheduler in made:
        await scheduler.stop()


async def results(*futures: asyncio.Future) -> list:
    return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), WAIT)


def sample(metrics: PodMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def text(words: list[Word] | None) -> str | None:
    return None if words is None else "".join(w.text for w in words).strip()


async def test_each_job_gets_its_own_words(make):
    model = FakeModel()
    s = make(model)
    s.start()
    futures = [s.submit(f"session-{i}", job(FINAL, i)) for i in range(3)]
    assert [text(r) for r in await results(*futures)] == ["m0", "m1", "m2"]
    assert model.threads and "MainThread" not in model.threads  # the loop stays free


async def test_file_windows_wait_for_the_last_live_session_when_none_may_ride_along(make):
    model = FakeModel()
    s = make(model, file_batch_with_live=0)
    s.live_sessions = 1
    s.start()
    upload = s.submit("file", job(FILE, 7), "low")
    assert text((await results(s.submit("live", job(FINAL, 1))))[0]) == "m1"
    assert not upload.done() and model.batches == [[1]]  # the final ran alone; the file window waits
    s.live_sessions = 0
    assert text((await results(upload))[0]) == "m7"


async def test_file_windows_start_only_while_every_live_session_is_quiet(make):
    model = FakeModel()
    quiet = False
    s = make(model, file_batch_with_live=1, live_quiet=lambda: quiet)
    s.live_sessions = 2
    s.start()
    upload = s.submit("file", job(FILE, 7), "low")
    assert text((await results(s.submit("live", job(FINAL, 1))))[0]) == "m1"
    assert not upload.done() and model.batches == [[1]]  # someone is speaking: the file window waits
    quiet = True  # nobody speaks: seen at the next look, with no new work to wake the loop
    assert text((await results(upload))[0]) == "m7"


async def test_jobs_submitted_together_share_one_model_call(make):
    model = FakeModel()
    s = make(model, max_batch=8)
    s.start()
    futures = [s.submit(f"session-{i}", job(FINAL if i % 2 else PARTIAL, i)) for i in range(5)]
    await results(*futures)
    assert len(model.batches) == 1
    assert sorted(model.batches[0]) == [0, 1, 2, 3, 4]
    assert model.batches[0] == [1, 3, 0, 2, 4]  # finals first, then arrival


async def test_a_job_arriving_within_the_batch_window_joins_the_batch(make):
    model = FakeModel()
    s = make(model, batch_window=0.2)
    s.start()
    await asyncio.sleep(0)  # the scheduler is idle, waiting for work
    first = s.submit("a", job(FINAL, 1))
    await asyncio.sleep(0)  # it wakes and starts its batch window
    assert model.batches == []
    second = s.submit("b", job(FINAL, 2))
    await results(first, second)
    assert model.batches == [[1, 2]]


async def test_max_batch_one_gives_one_job_per_call_in_priority_order(make):
    model = FakeModel()
    s = make(model, max_batch=1)
    futures = [
        s.submit("a", job(PARTIAL, 1), "low"),
        s.submit("b", job(FINAL, 2), "normal"),
        s.submit("c", job(PARTIAL, 3), "high"),
        s.submit("d", job(FINAL, 4), "high"),
    ]
    s.start()
    await results(*futures)
    assert model.batches == [[4], [2], [3], [1]]


async def test_max_batch_cuts_a_large_queue(make):
    model = FakeModel()
    s = make(model, max_batch=3)
    futures = [s.submit(f"s{i}", job(FINAL, i)) for i in range(7)]
    s.start()
    await results(*futures)
    assert model.batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_newer_partial_replaces_the_queued_one(make):
    model = FakeModel()
    metrics = PodMetrics()
    s = make(model, metrics=metrics)
    old = s.submit("a", job(PARTIAL, 1))
    other = s.submit("b", job(PARTIAL, 2))
    new = s.submit("a", job(PARTIAL, 3))
    assert old.done() and old.result() is None  # at once, not when the batch runs
    assert s.queue_length == 2
    s.start()
    assert [text(r) for r in await results(new, other)] == ["m3", "m2"]
    assert sorted(m for b in model.batches for m in b) == [2, 3]  # the old one never reached the model
    assert sample(metrics, "voxfleet_pod_partials_dropped_total", reason="replaced") == 1


async def test_a_final_does_not_replace_a_partial(make):
    model = FakeModel()
    s = make(model)
    partial = s.submit("a", job(PARTIAL, 1))
    final = s.submit("a", job(FINAL, 2))
    assert not partial.done()
    s.start()
    assert [text(r) for r in await results(partial, final)] == ["m1", "m2"]


async def test_withdraw_partial(make):
    model = FakeModel()
    s = make(model)
    final = s.submit("a", job(FINAL, 1))
    partial = s.submit("a", job(PARTIAL, 2))
    assert s.withdraw_partial("b") is False
    assert s.withdraw_partial("a") is True
    assert partial.done() and partial.result() is None
    assert s.withdraw_partial("a") is False
    assert not final.done()  # only the partial is taken back
    s.start()
    assert text((await results(final))[0]) == "m1"
    assert model.batches == [[1]]


async def test_stale_partials_are_dropped_before_they_reach_the_model(make):
    model = FakeModel()
    clock = FakeClock()
    metrics = PodMetrics()
    s = make(model, partial_max_wait=1.5, clock=clock, metrics=metrics)
    stale = s.submit("a", job(PARTIAL, 1))
    final = s.submit("a", job(FINAL, 2))
    clock.now += 2.0
    fresh = s.submit("b", job(PARTIAL, 3))
    s.start()
    got = await results(stale, final, fresh)
    assert [text(r) for r in got] == [None, "m2", "m3"]
    assert model.batches == [[2, 3]]
    assert sample(metrics, "voxfleet_pod_partials_dropped_total", reason="stale") == 1


async def test_a_model_failure_fails_only_its_batch_and_the_scheduler_keeps_serving(make):
    model = FakeModel(fail_on={2})
    s = make(model, max_batch=1)
    futures = [s.submit(f"s{i}", job(FINAL, i)) for i in (1, 2, 3)]
    s.start()
    got = await results(*futures)
    assert text(got[0]) == "m1"
    assert isinstance(got[1], RuntimeError)
    assert text(got[2]) == "m3"
    assert not s.busy
    later = s.submit("s4", job(FINAL, 4))
    assert text((await results(later))[0]) == "m4"


async def test_a_failure_fails_every_job_of_its_batch(make):
    model = FakeModel(fail_on={2})
    s = make(model, max_batch=2)
    futures = [s.submit(f"s{i}", job(FINAL, i)) for i in (1, 2, 3)]
    s.start()
    got = await results(*futures)
    assert isinstance(got[0], RuntimeError) and isinstance(got[1], RuntimeError)
    assert text(got[2]) == "m3"


async def test_a_cancelled_job_is_skipped(make):
    model = FakeModel()
    s = make(model)
    cancelled = s.submit("a", job(FINAL, 1))
    kept = s.submit("b", job(FINAL, 2))
    cancelled.cancel()
    s.start()
    await results(kept)
    assert model.batches == [[2]]


async def test_stop_fails_what_is_still_queued(make):
    model = FakeModel()
    s = make(model)
    queued = s.submit("a", job(FINAL, 1))
    await s.stop()
    with pytest.raises(SchedulerClosed):
        await asyncio.wait_for(queued, WAIT)
    assert model.batches == [] and s.queue_length == 0



async def test_stop_resolves_the_batch_being_decoded(make):
    started, release = threading.Event(), threading.Event()

    def slow_model(audios: list[np.ndarray]) -> list[list[Word]]:
        started.set()
        release.wait(WAIT)
        return [[] for _ in audios]

    s = make(slow_model)
    s.start()
    running = s.submit("a", job(FINAL, 1))
    try:
        for _ in range(int(WAIT / 0.005)):
            if started.is_set():
                break
            await asyncio.sleep(0.005)
        assert started.is_set()
        await s.stop()
        await asyncio.sleep(0)
        assert running.done()  # with SchedulerClosed, or its words: anything but pending forever
    finally:
        release.set()


async def test_metrics_count_batches_and_queue(make):
    model = FakeModel()
    metrics = PodMetrics()
    s = make(model, metrics=metrics)
    futures = [s.submit(f"s{i}", job(FINAL, i)) for i in range(3)]
    assert sample(metrics, "voxfleet_pod_scheduler_queue_length") == 3
    s.start()
    await results(*futures)
    assert sample(metrics, "voxfleet_pod_scheduler_queue_length") == 0
    assert sample(metrics, "voxfleet_pod_batch_size_count") == 1
    assert sample(metrics, "voxfleet_pod_batch_size_sum") == 3
    assert sample(metrics, "voxfleet_pod_scheduler_queue_wait_seconds_count", kind=FINAL) == 3
