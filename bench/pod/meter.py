"""What the benchmark reads from the machine and the server, not from the streams.

CPU comes from /proc (bench/common/procstat.py: a process's utime+stime, the
whole machine's busy time), so the numbers need Linux. Pod metrics come from
its /metrics page, parsed with prometheus_client's own parser. Nothing here changes anything.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass

from bench.common.procstat import machine_cpu_seconds, process_cpu_seconds


@dataclass
class CpuSample:
    wall: float
    server: float
    client: float
    machine_busy: float


def cpu_sample(server_pid: int | None) -> CpuSample:
    server = process_cpu_seconds(server_pid) if server_pid else 0.0
    return CpuSample(time.monotonic(), server, time.process_time(), machine_cpu_seconds()[0])


def cpu_cores(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Cores used between two samples: by the server, by this load generator, by anything else."""
    wall = max(after.wall - before.wall, 1e-9)
    server = (after.server - before.server) / wall
    client = (after.client - before.client) / wall
    machine = (after.machine_busy - before.machine_busy) / wall
    return {
        "server_cores": round(server, 3),
        "client_cores": round(client, 3),
        "machine_cores": round(machine, 3),
        "other_cores": round(max(0.0, machine - server - client), 3),
    }


# --- pod metrics ---------------------------------------------------------------


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """Every sample of a Prometheus text page as {'name{label="v"}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def _total(samples: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label sets."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def pod_metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """The pod's own view of one run: what changed on /metrics between two scrapes."""
    p = "voxfleet_pod_"

    def delta(name: str) -> float:
        return _total(after, name) - _total(before, name)

    batches = delta(p + "batch_size_count")
    compute = delta(p + "compute_seconds_total")
    audio = delta(p + "audio_received_seconds_total")
    finals = delta(p + "final_latency_seconds_count")
    return {
        "batches": batches,
        "batch_size_mean": round(delta(p + "batch_size_sum") / batches, 3) if batches else None,
        "compute_seconds": round(compute, 3),
        "audio_seconds": round(audio, 3),
        "compute_per_audio_second": round(compute / audio, 4) if audio else None,
        "decoded_final_seconds": round(delta(p + 'decoded_audio_seconds_total{kind="final"}'), 3),
        "decoded_partial_seconds": round(delta(p + 'decoded_audio_seconds_total{kind="partial"}'), 3),
        "partials_dropped": delta(p + "partials_dropped_total"),
        "partials_sent": delta(p + "partials_total"),
        "finals_sent": delta(p + "finals_total"),
        "refusals": delta(p + "refusals_total"),
        "pod_final_latency_mean": round(delta(p + "final_latency_seconds_sum") / finals, 3) if finals else None,
    }
