"""CPU time from /proc: per process, per process tree (nginx and its workers), whole machine.

Linux only. Nothing here changes anything; a process that is gone reads as 0
(its CPU time is lost with it, which the progress lines would show as a drop).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields after the last ')' are plain.
    return stat[stat.rindex(")") + 2:].split()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, not its children), in seconds; 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(pid: int) -> list[int]:
    """Direct children of a process (nginx's workers), from /proc/*/stat."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
                out.append(int(entry))
    return out


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


@dataclass
class Sample:
    wall: float
    groups: dict[str, float]  # name -> CPU seconds of its processes
    machine: float


def sample(groups: dict[str, list[int]]) -> Sample:
    """CPU seconds of each named group of processes, and of the machine, now."""
    return Sample(time.monotonic(), {name: sum(process_cpu_seconds(p) for p in pids) for name, pids in groups.items()},
                  machine_cpu_seconds())


def cores(before: Sample, after: Sample) -> dict[str, float]:
    """Cores used between two samples by each group, by the machine, and by everything else (`other`)."""
    wall = max(after.wall - before.wall, 1e-9)
    out = {f"{name}_cores": round((after.groups[name] - before.groups.get(name, 0.0)) / wall, 3) for name in after.groups}
    machine = (after.machine - before.machine) / wall
    out["machine_cores"] = round(machine, 3)
    out["other_cores"] = round(max(0.0, machine - sum(v for k, v in out.items() if k != "machine_cores")), 3)
    out["seconds"] = round(wall, 3)
    return out


def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
