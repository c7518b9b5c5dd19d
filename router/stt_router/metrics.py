"""The router's Prometheus metrics: what the operator scales on and people debug with.

One registry per router, names prefixed `voxfleet_router_`, base units, no
session or key ids as labels (pod ordinals are bounded by the pool size).
The queue metrics are the autoscaler's input: sessions waiting and how long
they waited. Relay latency is the time a frame spends inside the router, so
its buckets start far below the speech-latency ones, and reach seconds: a
frame held for a replay, or a router that has fallen behind, must show as
such, not pile up in +Inf. The event-loop lag says how far behind the
router's one thread is (a sleep's overshoot): every frame, ack and poll
waits that long before the router even looks at it, so it is the first
sign that a router needs more cores or replicas.

With `--workers` above 1 every worker process has its own registry: a
scrape through the shared port reads whichever worker the kernel hands the
connection to (docs/router.md, "Several cores").
"""

from __future__ import annotations

import asyncio
import collections

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
RELAY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0)

LAG_INTERVAL_SECONDS = 0.1
"""How often the event-loop lag is sampled (a sleep of this long, and how much later it ended)."""
LAG_WINDOW = 10
"""The gauge shows the largest of the last this many samples (one second), so a scrape does not miss a stall."""


SESSION_SERIES = (("native", "start"), ("native", "resume"), ("whisperlive", "start"), ("realtime", "start"))
"""The (protocol, kind) label pairs of voxfleet_router_sessions_total (stt_router.server)."""

FILE_JOB_REASONS = ("done", "refused", "unauthorized", "bad_request", "too_large", "upload_timeout", "queue_full",
                    "queue_timeout", "draining", "failed", "client_gone")
"""How a file job ended (voxfleet_router_file_jobs_total, stt_router.files): answered by a pod (done, or
refused: the pod's own error answer relayed), or by the router (unauthorized, bad_request, too_large, upload_timeout,
queue_full, queue_timeout, draining, failed: every attempt failed, or the pod's stream ended in an error
event), or its client left first (client_gone)."""
FILE_RETRY_REASONS = ("refused", "failed")
"""Why a file job was sent again (voxfleet_router_file_retries_total): its pod refused it (429, 503), or failed."""
FILE_BYTES_BUCKETS = (64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "voxfleet_router_"
        self.sessions_active = Gauge(p + "sessions_active", "Sessions relayed to a pod now, by protocol", ["protocol"], registry=r)
        self.sessions_total = Counter(p + "sessions_total", "Sessions opened (new or resumed), by protocol and kind", ["protocol", "kind"], registry=r)
        for protocol, kind in SESSION_SERIES:
            # Exported as 0 from the start: rate() counts increases between samples, so a series born
            # at 1 would hide this router's first session from the autoscaler's arrival rate.
            self.sessions_total.labels(protocol, kind)
        self.sessions_queued = Gauge(p + "sessions_queued", "Sessions waiting for a free pod slot", registry=r)
        self.queue_oldest_wait = Gauge(p + "queue_oldest_wait_seconds", "Age of the oldest waiting session", registry=r)
        self.queue_wait = Histogram(p + "queue_wait_seconds", "Time a session waited for a slot (placed or not)", buckets=WAIT_BUCKETS, registry=r)
        self.placements = Counter(p + "placements_total", "Sessions placed, by pod ordinal", ["ordinal"], registry=r)
        self.failovers = Counter(p + "failovers_total", "Sessions moved to another pod after theirs was lost, by result", ["result"], registry=r)
        self.replayed_seconds = Counter(p + "replayed_audio_seconds_total", "Audio replayed to a new pod after failovers", registry=r)
        self.refusals = Counter(p + "refusals_total", "Sessions refused or closed by the router, by reason", ["reason"], registry=r)
        self.relay_latency = Histogram(p + "relay_latency_seconds", "Time an audio frame spends inside the router, from "
                                       "read to written to its pod (one frame in 16 sampled)", buckets=RELAY_BUCKETS, registry=r)
        self.event_loop_lag = Gauge(p + "event_loop_lag_seconds", "How late the router's event loop runs what is due "
                                    "(largest sleep overshoot over the last second)", registry=r)
        self.replay_bytes = Gauge(p + "replay_bytes", "Audio bytes held in replay tails over all sessions", registry=r)
        self.pods_ready = Gauge(p + "pods_ready", "Pods that take new sessions", registry=r)
        self.pods_known = Gauge(p + "pods_known", "Pods discovered", registry=r)
        self.free_slots = Gauge(p + "free_slots", "Free session slots over the ready pods", registry=r)
        self.reserved_slots = Gauge(p + "reserved_slots", "Session slots reserved for a priority class (--reserve: "
                                    "its share of the ready pods' slots, rounded up)", ["priority"], registry=r)
        self.reserved_slots_in_use = Gauge(p + "reserved_slots_in_use", "Reserved session slots that sessions of "
                                           "their class hold now (through this router)", ["priority"], registry=r)
        self.ready = Gauge(p + "ready", "1 when this router accepts sessions", registry=r)
        self.draining = Gauge(p + "draining", "1 while this router drains before shutdown", registry=r)
        self.file_jobs_queued = Gauge(p + "file_jobs_queued", "File transcription jobs waiting for a pod's file slot", registry=r)
        self.file_jobs_active = Gauge(p + "file_jobs_active", "File transcription jobs sent to a pod, not yet answered", registry=r)
        self.file_jobs = Counter(p + "file_jobs_total", "File transcription jobs, by how they ended", ["reason"], registry=r)
        for reason in FILE_JOB_REASONS:
            self.file_jobs.labels(reason)
        self.file_queue_wait = Histogram(p + "file_queue_wait_seconds", "Time a file job waited for a file slot "
                                         "(each time it was queued, placed or not)", buckets=WAIT_BUCKETS + (120.0, 300.0),
                                         registry=r)
        self.file_upload_bytes = Histogram(p + "file_upload_bytes", "Size of the uploaded files the router took",
                                           buckets=FILE_BYTES_BUCKETS, registry=r)
        self.file_retries = Counter(p + "file_retries_total", "File jobs sent again after their pod refused or failed, "
                                    "by why", ["reason"], registry=r)
        for reason in FILE_RETRY_REASONS:
            self.file_retries.labels(reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def watch_event_loop_lag(gauge: Gauge, interval: float = LAG_INTERVAL_SECONDS, window: int = LAG_WINDOW) -> None:
    """Sleep `interval` again and again; how much later than asked each sleep ends is the loop's lag."""
    loop = asyncio.get_running_loop()
    recent: collections.deque[float] = collections.deque(maxlen=window)
    while True:
        asked = loop.time() + interval
        await asyncio.sleep(interval)
        recent.append(max(0.0, loop.time() - asked))
        gauge.set(max(recent))
