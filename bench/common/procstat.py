"""CPU time from /proc: of a process, of the whole machine, and who a process's children are.

Linux only. Reads, never writes or signals anything.
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards); OSError if the process is gone."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces and parentheses; the fields after the last ')' are plain.
    return stat[stat.rindex(")") + 2:].split()


def process_cpu_seconds(pid: int, if_gone: float | None = None) -> float:
    """utime + stime of a process (all its threads, not its children), in seconds.

    A process that is gone reads as `if_gone`; with `if_gone=None` the OSError is raised."""
    try:
        fields = stat_fields(pid)
    except OSError:
        if if_gone is None:
            raise
        return if_gone
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(pid: int) -> list[int]:
    """Direct children of a process (nginx's workers, the router's workers), from /proc/*/stat."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = stat_fields(int(entry))
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return (total - idle) / CLK_TCK, total / CLK_TCK
