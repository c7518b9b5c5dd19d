"""Numbers from stream records: per-stream outcomes in, one summary per N out, and the headline.

Pure functions over plain data (dicts as stored in the results JSON), shared
by run.py (progress lines) and plot.py (figure, table, headline).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

TARGET_P95_SECONDS = 3.0
"""Final (completed-segment) latency a pod must hold at p95 (shared/ARCHITECTURE.md)."""
WER_TOLERANCE = 0.02
"""How much worse than its own single-stream WER a load may make the mean WER."""


@dataclass
class StreamRecord:
    index: int
    voice: str
    audio_seconds: float
    started_at: float = 0.0  # seconds after the N run began
    outcome: str = "ok"  # ok | refused | error | timeout
    detail: str = ""
    final_latencies: list[float] = field(default_factory=list)
    final_ends: list[float] = field(default_factory=list)
    partial_arrivals: list[float] = field(default_factory=list)  # stream time
    partial_gaps: list[float] = field(default_factory=list)
    transcript: str = ""
    wer: float | None = None
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("final_latencies", "final_ends", "partial_arrivals", "partial_gaps"):
            d[key] = [round(x, 3) for x in d[key]]
        if d["wer"] is not None:
            d["wer"] = round(d["wer"], 4)
        return d


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def gaps_inside_speech(arrivals: list[float], speech: list[tuple[float, float]]) -> list[float]:
    """Gaps between consecutive partials that both arrived (stream time) inside one spoken sentence."""
    gaps = []
    for start, end in speech:
        inside = sorted(t for t in arrivals if start <= t <= end)
        gaps += [b - a for a, b in zip(inside, inside[1:])]
    return gaps


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def summarise(streams: list[dict], speech_seconds: float) -> dict:
    """One N run's numbers, pooled over its streams (finals and gaps pooled, WER per stream)."""
    latencies = [x for s in streams for x in s["final_latencies"]]
    gaps = [x for s in streams for x in s["partial_gaps"]]
    wers = [s["wer"] for s in streams if s["outcome"] == "ok" and s["wer"] is not None]
    partials_in_speech = sum(len(s["partial_gaps"]) for s in streams)
    first = next((s for s in streams if s["index"] == 0), None)
    return {
        "streams": len(streams),
        "ok": sum(s["outcome"] == "ok" for s in streams),
        "refused": sum(s["outcome"] == "refused" for s in streams),
        "errors": sum(s["outcome"] in ("error", "timeout") for s in streams),
        "finals": len(latencies),
        "final_p50": _r(percentile(latencies, 50)),
        "final_p95": _r(percentile(latencies, 95)),
        "final_max": _r(max(latencies) if latencies else None),
        "partial_gap_p50": _r(percentile(gaps, 50)),
        "partial_gap_p95": _r(percentile(gaps, 95)),
        "partial_gaps": partials_in_speech,
        "partials_per_speech_second": _r(
            sum(len(s["partial_arrivals"]) for s in streams) / speech_seconds if speech_seconds else None),
        "wer_mean": _r(sum(wers) / len(wers) if wers else None, 4),
        "wer_worst": _r(max(wers) if wers else None, 4),
        "wer_stream0": _r(first["wer"] if first else None, 4),
    }


def sustains(run: dict, baseline_wer: float | None) -> bool:
    s = run["summary"]
    if s["refused"] or s["errors"] or s["final_p95"] is None or s["wer_mean"] is None:
        return False
    if s["final_p95"] > TARGET_P95_SECONDS:
        return False
    return baseline_wer is None or s["wer_mean"] <= baseline_wer + WER_TOLERANCE


def headline(target: dict) -> dict:
    """Largest N a target sustains: p95 final latency <= 3 s, mean WER within 0.02 of its
    single-stream WER, nothing refused or failed; every smaller N tested must pass too."""
    runs = sorted(target["runs"], key=lambda r: r["n"])
    if not runs:
        return {"sustained_n": None, "baseline_n": None, "baseline_wer": None, "first_failure": None}
    base = runs[0]
    baseline_wer = base["summary"]["wer_mean"]
    best = None
    failure = None
    for run in runs:
        if not sustains(run, baseline_wer):
            s = run["summary"]
            why = []
            if s["refused"] or s["errors"]:
                why.append(f"{s['refused']} refused, {s['errors']} failed")
            if s["final_p95"] is None or s["final_p95"] > TARGET_P95_SECONDS:
                why.append(f"p95 {s['final_p95']} s")
            if baseline_wer is not None and (s["wer_mean"] is None or s["wer_mean"] > baseline_wer + WER_TOLERANCE):
                why.append(f"WER {s['wer_mean']} vs {baseline_wer} at N={base['n']}")
            failure = {"n": run["n"], "why": "; ".join(why)}
            break
        best = run["n"]
    return {"sustained_n": best, "baseline_n": base["n"], "baseline_wer": baseline_wer, "first_failure": failure}


def progress_line(target: str, n: int, summary: dict, cpu: dict, protocol: str) -> str:
    what = "final" if protocol == "native" else "completed"

    def s(x, unit=" s"):
        return "-" if x is None else f"{x:.2f}{unit}"

    line = (f"{target} N={n}: p95 {what} {s(summary['final_p95'])} (p50 {s(summary['final_p50'])}, "
            f"max {s(summary['final_max'])}), WER {s(summary['wer_mean'], '')} (worst {s(summary['wer_worst'], '')}), "
            f"cpu {cpu['server_cores']:.2f} cores")
    if protocol == "native":
        line += f", partial gap p95 {s(summary['partial_gap_p95'])}"
    if summary["refused"] or summary["errors"]:
        line += f", {summary['refused']} refused, {summary['errors']} failed"
    if cpu["other_cores"] > 0.25:
        line += f"  [other load on the machine: {cpu['other_cores']:.2f} cores - numbers not clean]"
    return line
