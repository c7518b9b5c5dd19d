"""The pod's Prometheus metrics: what the operator scales on and people debug with.

One registry per pod (not the process-global default), names prefixed
`voxfleet_pod_`, base units, no session ids as labels. Latency buckets span
speech latencies (50 ms .. 10 s), not HTTP defaults.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
PROTOCOLS = ("native", "whisperlive", "realtime")
"""Values of the `protocol` label (stt_pod.native, stt_pod.whisperlive, stt_pod.realtime)."""


FILE_OUTCOMES = ("done", "refused", "failed", "client_gone")


class PodMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "voxfleet_pod_"
        self.sessions_active = Gauge(p + "sessions_active", "Sessions open on this pod (connected or awaiting resume)", registry=r)
        self.sessions_capacity = Gauge(p + "sessions_capacity", "Most sessions this pod admits", registry=r)
        self.sessions_total = Counter(p + "sessions_total", "Sessions started, by protocol", ["protocol"], registry=r)
        for protocol in PROTOCOLS:
            # Exported as 0 from the start: rate() only counts increases between two samples, so a
            # series born at 1 would hide a pod's first session from the autoscaler's arrival rate.
            self.sessions_total.labels(protocol)
        self.refusals = Counter(p + "refusals_total", "Sessions refused or closed for cause, by reason", ["reason"], registry=r)
        self.audio_seconds = Counter(p + "audio_received_seconds_total", "Seconds of audio accepted", registry=r)
        self.compute_seconds = Counter(p + "compute_seconds_total", "Wall seconds the model spent decoding", registry=r)
        self.decoded_seconds = Counter(p + "decoded_audio_seconds_total", "Seconds of audio windows decoded, by kind", ["kind"], registry=r)
        self.batch_size = Histogram(p + "batch_size", "Decode jobs per model call", buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram(p + "scheduler_queue_wait_seconds", "Time a decode job waited for its batch, by kind", ["kind"], buckets=WAIT_BUCKETS, registry=r)
        self.queue_length = Gauge(p + "scheduler_queue_length", "Decode jobs waiting", registry=r)
        self.partials_dropped = Counter(p + "partials_dropped_total", "Partial jobs dropped, by reason (stale, replaced)", ["reason"], registry=r)
        self.final_latency = Histogram(p + "final_latency_seconds", "From the segment's last audio arriving to its final being sent", buckets=LATENCY_BUCKETS, registry=r)
        self.finals = Counter(p + "finals_total", "Final segments sent", registry=r)
        self.partials = Counter(p + "partials_total", "Partial results sent", registry=r)
        self.frames_duplicate = Counter(p + "frames_duplicate_total", "Audio frames dropped as duplicates", registry=r)
        # Gaps, not frames: one sequence number jumping to 2**32 - 1 would otherwise count four billion.
        self.frames_gap = Counter(p + "frame_gaps_total", "Gaps in a session's frame sequence, skipped (each gap once, however long)", registry=r)
        self.resumes = Counter(p + "resumes_total", "Sessions resumed after a dropped connection", registry=r)
        # The file lane; its windows' waits and audio are the scheduler's series with kind="file".
        self.file_jobs_active = Gauge(p + "file_jobs_active", "Uploaded files being transcribed", registry=r)
        self.file_jobs = Counter(p + "file_jobs_total", "Uploaded files, by how they ended (done, refused, failed, client_gone)", ["reason"], registry=r)
        for outcome in FILE_OUTCOMES:
            self.file_jobs.labels(outcome)
        self.file_audio_seconds = Counter(p + "file_audio_seconds_total", "Seconds of audio in uploaded files accepted", registry=r)
        self.model_load_seconds = Gauge(p + "model_load_seconds", "Seconds to load and warm the model", registry=r)
        self.ready = Gauge(p + "ready", "1 when the model is warm and the pod admits sessions", registry=r)
        self.draining = Gauge(p + "draining", "1 while the pod drains before shutdown", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
