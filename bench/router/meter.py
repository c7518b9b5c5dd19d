"""CPU of named groups of processes (pods, generator, router, nginx) and of the machine, between two moments.

Read from /proc (bench/common/procstat.py), so Linux only. Nothing here
changes anything; a process that is gone reads as 0 (its CPU time is lost
with it, which the progress lines would show as a drop).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.common.procstat import machine_cpu_seconds, process_cpu_seconds


@dataclass
class Sample:
    wall: float
    groups: dict[str, float]  # name -> CPU seconds of its processes
    machine: float


def sample(groups: dict[str, list[int]]) -> Sample:
    """CPU seconds of each named group of processes, and of the machine, now."""
    wall = time.monotonic()
    seconds = {name: sum(process_cpu_seconds(p, if_gone=0.0) for p in pids) for name, pids in groups.items()}
    return Sample(wall, seconds, machine_cpu_seconds()[0])


def cores(before: Sample, after: Sample) -> dict[str, float]:
    """Cores used between two samples by each group, by the machine, and by everything else (`other`)."""
    wall = max(after.wall - before.wall, 1e-9)
    out = {f"{name}_cores": round((after.groups[name] - before.groups.get(name, 0.0)) / wall, 3) for name in after.groups}
    machine = (after.machine - before.machine) / wall
    out["machine_cores"] = round(machine, 3)
    out["other_cores"] = round(max(0.0, machine - sum(v for k, v in out.items() if k != "machine_cores")), 3)
    out["seconds"] = round(wall, 3)
    return out
