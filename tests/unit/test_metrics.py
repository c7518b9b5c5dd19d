"""stt_pod.metrics: names, units and labels an operator and a dashboard can rely on."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from stt_pod.metrics import LATENCY_BUCKETS, PROTOCOLS, PodMetrics

ALLOWED_LABELS = {"protocol", "reason", "kind", "le"}


def exercised() -> PodMetrics:
    m = PodMetrics()
    m.sessions_total.labels("native").inc()
    m.refusals.labels("full").inc()
    m.decoded_seconds.labels("final").inc(2.0)
    m.queue_wait.labels("partial").observe(0.02)
    m.partials_dropped.labels("stale").inc()
    m.final_latency.observe(1.2)
    m.batch_size.observe(3)
    m.audio_seconds.inc(4.5)
    return m


def families(m: PodMetrics):
    return list(text_string_to_metric_families(m.render().decode()))


def test_every_metric_is_prefixed():
    fams = families(exercised())
    assert len(fams) >= 15
    assert all(f.name.startswith("voxfleet_pod_") for f in fams)


def test_no_session_or_user_labels():
    for family in families(exercised()):
        for s in family.samples:
            assert set(s.labels) <= ALLOWED_LABELS, (s.name, s.labels)


def test_counters_end_in_total_and_carry_base_units():
    fams = {f.name: f for f in families(exercised())}
    counters = [f for f in fams.values() if f.type == "counter"]
    assert counters
    for f in counters:
        assert any(s.name == f.name + "_total" for s in f.samples), f.name
    assert "voxfleet_pod_audio_received_seconds" in fams
    assert not any("_ms" in name or "millis" in name for name in fams)


def test_values_are_exposed():
    text = exercised().render().decode()
    assert 'voxfleet_pod_sessions_total{protocol="native"} 1.0' in text
    assert "voxfleet_pod_audio_received_seconds_total 4.5" in text


def test_latency_buckets_span_speech_latencies():
    assert LATENCY_BUCKETS[0] <= 0.05 and LATENCY_BUCKETS[-1] >= 10
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


def test_each_pod_has_its_own_registry():
    a, b = PodMetrics(), PodMetrics()  # the global default registry would refuse the second
    a.finals.inc()
    assert a.registry.get_sample_value("voxfleet_pod_finals_total") == 1
    assert b.registry.get_sample_value("voxfleet_pod_finals_total") == 0


def test_session_counters_start_at_zero_for_every_protocol():
    # A labelled counter missing until its first increment would be born at 1, and rate() (the
    # operator's arrivalRate) would never count a fresh pod's first session.
    from stt_pod import whisperlive

    assert whisperlive.PROTOCOL in PROTOCOLS and "native" in PROTOCOLS
    text = PodMetrics().render().decode()
    for protocol in PROTOCOLS:
        assert f'voxfleet_pod_sessions_total{{protocol="{protocol}"}} 0.0' in text
