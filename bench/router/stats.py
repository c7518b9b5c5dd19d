"""Numbers from the raw phase results: one summary per phase, added latency per N, the verdict.

Pure functions over plain data (dicts as stored in the results JSON), shared
by run.py (progress lines) and plot.py (figure, table, verdict).

Added latency is a difference of distributions, not of frames: a frame cannot
take the direct path and the proxied one at once, so the added p99 at N is
(p99 of the round trips through the proxy) - (p99 of the direct round trips),
both measured at N in the same invocation, one right after the other.
"""

from __future__ import annotations

import math
from array import array

PATHS = ("direct", "router", "pipe", "nginx")
PROXIES = ("router", "pipe", "nginx")
JUDGED = ("direct", "router", "nginx")
"""The paths the verdict needs; `pipe` (a bare Python TCP pipe, bench/router/pipe.py) is the floor beside them."""
TARGET_ADDED_P99_MS = 2.0
"""Issue 5: p99 added latency per frame through the router at 1000 streams on the 2-core machine."""
TARGET_CPU_RATIO = 2.0
"""Issue 5: router CPU within this factor of nginx's, same load."""
MIN_RATE_FRACTION = 0.99
"""Below this share of the scheduled send rate the generator fell behind (or streams were lost)."""
MAX_SEND_LAG_P99_MS = 5.0
"""A generator whose frames leave later than this at p99 is behind its schedule."""
MAX_OTHER_CORES = 0.25
"""More CPU than this used by processes outside the benchmark makes a phase not clean."""
HIST_EDGES_MS = [round(0.01 * 10 ** (i / 20), 6) for i in range(0, 121)]
"""Histogram bucket upper edges for round trips: 10 us .. 10 s, 20 per decade."""


def percentile(sorted_values, q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default) of an already sorted sequence; None when empty."""
    n = len(sorted_values)
    if not n:
        return None
    k = (n - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _ms(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x * 1000, digits)


def histogram(sorted_values) -> list[int]:
    """Counts per HIST_EDGES_MS bucket (seconds in, a value lands in the first edge >= it; the last bucket takes the rest)."""
    counts = [0] * len(HIST_EDGES_MS)
    i = 0
    for v in sorted_values:
        ms = v * 1000
        while i < len(HIST_EDGES_MS) - 1 and ms > HIST_EDGES_MS[i]:
            i += 1
        counts[i] += 1
    return counts


def summarise_phase(workers: list[dict], n: int, period: float) -> dict:
    """One phase (a path at N), pooled over the generator's workers."""
    rtts = array("d")
    lateness = array("d")
    for w in workers:
        rtts.frombytes(w["rtts"])
        lateness.frombytes(w["lateness"])
    rtts_sorted, late_sorted = sorted(rtts), sorted(lateness)
    firsts = [w["first_send"] for w in workers if w["first_send"] is not None]
    lasts = [w["last_send"] for w in workers if w["last_send"] is not None]
    sent = sum(w["frames_sent"] for w in workers)
    span = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
    rate = (sent - 1) / span if span > 0 and sent > 1 else None
    target = n / period
    counted = sum(w["frames_counted"] for w in workers)
    echoes = sum(w["echoes_counted"] for w in workers)
    errors = [e for w in workers for e in w["connect_errors"]]
    stream_errors = [e for w in workers for e in w["stream_errors"]]
    return {
        "streams": n,
        "connected": sum(w["connected"] for w in workers),
        "connect_seconds": max((w["connect_seconds"] for w in workers), default=None),
        "connect_errors": errors[:20],
        "frames_scheduled": sum(w["frames_scheduled"] for w in workers),
        "frames_sent": sent,
        "frames_counted": counted,
        "echoes": echoes,
        "lost": counted - echoes,  # no echo by the end of the phase: counted in rtt_ms at a lower bound
        "censored": sum(w.get("censored", 0) for w in workers),
        "ended_clean": sum(w["ended_clean"] for w in workers),
        "stream_errors": stream_errors[:20],
        "rtt_ms": {
            "p50": _ms(percentile(rtts_sorted, 50)),
            "p90": _ms(percentile(rtts_sorted, 90)),
            "p99": _ms(percentile(rtts_sorted, 99)),
            "p999": _ms(percentile(rtts_sorted, 99.9)),
            "max": _ms(rtts_sorted[-1] if rtts_sorted else None),
            "mean": _ms(sum(rtts_sorted) / len(rtts_sorted) if rtts_sorted else None),
        },
        "rtt_histogram": histogram(rtts_sorted),
        "send_lag_ms": {
            "p50": _ms(percentile(late_sorted, 50)),
            "p99": _ms(percentile(late_sorted, 99)),
            "max": _ms(late_sorted[-1] if late_sorted else None),
        },
        "send_rate": None if rate is None else round(rate, 1),
        "target_rate": round(target, 1),
        "rate_fraction": None if rate is None else round(rate / target, 4),
    }


def generator_verdict(summary: dict) -> str | None:
    """Why this phase's load was not what it should have been, or None when the generator kept up."""
    why = []
    if summary["connected"] < summary["streams"]:
        why.append(f"{summary['streams'] - summary['connected']} of {summary['streams']} streams did not connect")
    frac = summary["rate_fraction"]
    if frac is None or frac < MIN_RATE_FRACTION:
        why.append(f"sent {summary['send_rate']}/s of {summary['target_rate']}/s scheduled")
    lag = summary["send_lag_ms"]["p99"]
    if lag is None or lag > MAX_SEND_LAG_P99_MS:
        why.append(f"frames left {lag} ms late at p99 (> {MAX_SEND_LAG_P99_MS:g})")
    return "; ".join(why) or None


def phase_flags(phase: dict) -> list[str]:
    """Everything that makes one phase's numbers suspect."""
    s, cpu = phase["summary"], phase.get("cpu") or {}
    flags = []
    behind = generator_verdict(s)
    if behind:
        flags.append(f"generator behind: {behind}")
    if s["lost"]:
        flags.append(f"{s['lost']} frames without an echo by the end (their round trips count as lower bounds: "
                     "the percentiles are at least these)")
    if s["stream_errors"]:
        flags.append(f"{len(s['stream_errors'])} stream errors")
    if cpu.get("other_cores", 0) > MAX_OTHER_CORES:
        flags.append(f"other load on this machine: {cpu['other_cores']:.2f} cores - numbers not clean")
    return flags


def proxy_cores(path: str, cpu: dict | None) -> float | None:
    """CPU of the proxy under test in its own phase: the router process, or nginx's master and workers."""
    if not cpu or path == "direct":
        return None
    return cpu.get(f"{path}_cores")


def added(run: dict) -> dict:
    """Added latency per proxy at one N: its p50/p99 round trip minus the direct one (ms)."""
    phases = run["phases"]
    direct = phases.get("direct")
    out = {}
    for proxy in PROXIES:
        ph = phases.get(proxy)
        if ph is None or direct is None:
            continue
        d, p = direct["summary"]["rtt_ms"], ph["summary"]["rtt_ms"]
        out[proxy] = {q: (None if p[q] is None or d[q] is None else round(p[q] - d[q], 3)) for q in ("p50", "p99")}
        out[proxy]["cores"] = proxy_cores(proxy, ph.get("cpu"))
    return out


def verdict(results: dict) -> dict:
    """The issue's two targets, judged at the largest N measured with all three paths."""
    runs = [r for r in results.get("runs", []) if all(p in r["phases"] for p in JUDGED)]
    out = {"n": None, "added_p99_ms": None, "added_target_met": None, "router_cores": None, "nginx_cores": None,
           "pipe_cores": None, "cpu_ratio": None, "cpu_target_met": None, "flags": []}
    if not runs:
        return out
    run = max(runs, key=lambda r: r["n"])
    a = added(run)
    out["n"] = run["n"]
    out["added_p99_ms"] = a["router"]["p99"]
    out["added_target_met"] = None if a["router"]["p99"] is None else a["router"]["p99"] <= TARGET_ADDED_P99_MS
    rc, nc = a["router"]["cores"], a["nginx"]["cores"]
    out["router_cores"], out["nginx_cores"] = rc, nc
    out["pipe_cores"] = a.get("pipe", {}).get("cores")
    if rc is not None and nc:
        out["cpu_ratio"] = round(rc / nc, 2)
        out["cpu_target_met"] = rc <= TARGET_CPU_RATIO * nc
    out["flags"] = [f"{path} N={r['n']}: {f}" for r in results["runs"] for path, ph in r["phases"].items()
                    for f in phase_flags(ph)]
    return out


def progress_line(path: str, n: int, phase: dict, direct: dict | None) -> str:
    """One line per phase: `N=100 router: rtt p50 0.41 ms, p99 1.02 ms | added ... | cpu ... | sent ...`."""
    s, cpu = phase["summary"], phase.get("cpu") or {}

    def f(x, unit=" ms", digits=2, sign=False):
        return "-" if x is None else f"{x:+.{digits}f}{unit}" if sign else f"{x:.{digits}f}{unit}"

    r = s["rtt_ms"]
    line = f"N={n} {path}: rtt p50 {f(r['p50'])}, p99 {f(r['p99'])}, max {f(r['max'])}"
    if direct is not None and path != "direct":
        d = direct["summary"]["rtt_ms"]
        a50 = None if r["p50"] is None or d["p50"] is None else r["p50"] - d["p50"]
        a99 = None if r["p99"] is None or d["p99"] is None else r["p99"] - d["p99"]
        line += f" | added p50 {f(a50, sign=True)}, p99 {f(a99, sign=True)}"
    cores = proxy_cores(path, cpu)
    if cores is not None:
        line += f" | {path} cpu {cores:.2f} cores"
    frac = s["rate_fraction"]
    line += (f" | sent {f(s['send_rate'], '/s', 0)} ({'-' if frac is None else f'{frac * 100:.1f}%'}), "
             f"lag p99 {f(s['send_lag_ms']['p99'])}, lost {s['lost']}")
    if cpu:
        line += (f" | pods {cpu.get('pods_cores', 0):.2f}, generator {cpu.get('generator_cores', 0):.2f}, "
                 f"other {cpu.get('other_cores', 0):.2f} cores")
    for flag in phase_flags(phase):
        line += f"  [{flag}]"
    return line
