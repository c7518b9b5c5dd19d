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
    assert {("native", kind) for kind in kinds} | {("whisperlive", "start")} == set(SESSION_SERIES)
    assert 'sessions_total.labels("whisperlive", "start")' in source
