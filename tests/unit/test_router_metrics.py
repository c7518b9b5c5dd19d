"""The router's registry: series the autoscaler reads must exist before their first increment."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from stt_router.metrics import SESSION_SERIES, RouterMetrics

SERVER = Path(__file__).resolve().parents[2] / "router" / "stt_router" / "server.py"


def test_session_counters_start_at_zero_for_every_protocol_and_kind():
    # A labelled counter missing until its first increment is born at 1, and rate() (the operator's
    # arrivalRate) would never count this router's first session.
    samples = {(s.labels["protocol"], s.labels["kind"]): s.value
               for family in text_string_to_metric_families(RouterMetrics().render().decode())
               if family.name == "voxfleet_router_sessions" for s in family.samples if s.name.endswith("_total")}
    assert samples == {pair: 0.0 for pair in SESSION_SERIES}


def test_the_pairs_are_the_ones_the_server_counts():
    source = SERVER.read_text()
    kinds = set(re.findall(r'_relay\([^)]*"(start|resume)"\)', source))
    assert {("native", kind) for kind in kinds} | {("whisperlive", "start"), ("realtime", "start")} == set(SESSION_SERIES)
    assert 'sessions_total.labels("whisperlive", "start")' in source
    assert 'sessions_total.labels("realtime", "start")' in source


FILES = SERVER.parent / "files.py"


def test_file_job_reasons_start_at_zero_and_are_the_ones_the_file_lane_counts():
    from stt_router.metrics import FILE_JOB_REASONS, FILE_RETRY_REASONS

    families = {f.name: f for f in text_string_to_metric_families(RouterMetrics().render().decode())}
    jobs = {s.labels["reason"]: s.value for s in families["voxfleet_router_file_jobs"].samples if s.name.endswith("_total")}
    retries = {s.labels["reason"]: s.value for s in families["voxfleet_router_file_retries"].samples
               if s.name.endswith("_total")}
    assert jobs == {reason: 0.0 for reason in FILE_JOB_REASONS}
    assert retries == {reason: 0.0 for reason in FILE_RETRY_REASONS}
    source = FILES.read_text()
    used = set(re.findall(r'Refusal\("(\w+)"', source)) | set(re.findall(r'"(done|refused|failed|client_gone)"', source))
    assert used <= set(FILE_JOB_REASONS)
    assert set(re.findall(r'file_retries\.labels\("(\w+)"\)', source)) == set(FILE_RETRY_REASONS)


def test_file_lane_metrics_are_named_in_base_units():
    names = {f.name for f in text_string_to_metric_families(RouterMetrics().render().decode())}
    assert {"voxfleet_router_file_jobs_queued", "voxfleet_router_file_jobs_active", "voxfleet_router_file_jobs",
            "voxfleet_router_file_queue_wait_seconds", "voxfleet_router_file_upload_bytes"} <= names
