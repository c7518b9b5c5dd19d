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
    offline_wer: float | None = None  # the same file transcribed offline (reference.py)
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("final_latencies", "final_ends", "partial_arrivals", "partial_gaps"):
            d[key] = [round(x, 3) for x in d[key]]
        for key in ("wer", "offline_wer"):
            if d[key] is not None:
                d[key] = round(d[key], 4)
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
    paired = [(s["wer"], s["offline_wer"]) for s in streams
              if s["outcome"] == "ok" and s["wer"] is not None and s.get("offline_wer") is not None]
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
        "wer_offline_mean": _r(sum(o for _, o in paired) / len(paired) if paired else None, 4),
        "wer_excess_mean": _r(sum(w - o for w, o in paired) / len(paired) if paired else None, 4),
    }


def wer_key(runs: list[dict]) -> str:
    """Which WER the headline compares: the plain mean, as the issue defines it ("WER within 2 points
    of its single-stream WER"). The excess over each stream's offline WER is shown beside it: it
    removes the voice mix (N=1 has one voice, N=16 six), but it is noisier on short streams."""
    return "wer_mean"


def headline(target: dict) -> dict:
    """Largest N a target sustains: p95 final latency <= 3 s, mean WER within 0.02 of its own N=1 WER,
    nothing refused or
    failed; every smaller N tested must pass too. The smallest N tested is the WER baseline."""
    runs = sorted(target.get("runs", []), key=lambda r: r["n"])
    key = wer_key(runs)
    out = {"sustained_n": None, "baseline_n": None, "baseline_wer": None, "wer_key": key, "first_failure": None}
    if not runs:
        return out
    base = runs[0]
    baseline = base["summary"][key]
    out.update(baseline_n=base["n"], baseline_wer=baseline)
    for run in runs:
        s = run["summary"]
        why = []
        if s["refused"] or s["errors"]:
            why.append(f"{s['refused']} refused, {s['errors']} failed")
        if s["final_p95"] is None or s["final_p95"] > TARGET_P95_SECONDS:
            why.append(f"p95 {s['final_p95']} s > {TARGET_P95_SECONDS:g} s")
        if s[key] is None or (baseline is not None and s[key] > baseline + WER_TOLERANCE):
            why.append(f"{key} {s[key]} > {baseline} (N={base['n']}) + {WER_TOLERANCE}")
        if why:
            out["first_failure"] = {"n": run["n"], "why": "; ".join(why)}
            break
        out["sustained_n"] = run["n"]
    return out


def progress_line(target: str, n: int, summary: dict, cpu: dict | None, protocol: str,
                  label: str | None = None) -> str:
    """One line per N: `mode=batched N=4: p95 final 1.20 s, WER 0.18, cpu 1.60 cores | ...`."""
    what, default_label = {"native": ("final", "mode"), "realtime": ("completed", "mode")}.get(
        protocol, ("completed", "server"))
    label = label or default_label

    def f(x, unit=" s", digits=2):
        return "-" if x is None else f"{x:.{digits}f}{unit}"

    cores = "-" if cpu is None else f"{cpu['server_cores']:.2f}"
    line = (f"{label}={target} N={n}: p95 {what} {f(summary['final_p95'])}, WER {f(summary['wer_mean'], '')}, "
            f"cpu {cores} cores | p50 {f(summary['final_p50'])}, max {f(summary['final_max'])}, "
            f"worst WER {f(summary['wer_worst'], '')}")
    if summary.get("wer_excess_mean") is not None:
        line += f", over offline {summary['wer_excess_mean']:+.2f}"
    if protocol in ("native", "realtime"):
        line += f", partial gap p95 {f(summary['partial_gap_p95'])}"
    if summary["refused"] or summary["errors"]:
        line += f", {summary['refused']} refused, {summary['errors']} failed"
    if cpu is not None and cpu["other_cores"] > 0.25:
        line += f"  [other load on this machine: {cpu['other_cores']:.2f} cores - numbers not clean]"
    return line


PROTOCOL_TOLERANCE = 0.10
"""Issue #19: the protocols' p95 final latency and WER within 10 % of each other at the same N."""


def protocol_rows(targets: list[dict]) -> list[dict]:
    """One row per (target, N) of a --protocols run: protocol, mode, N and its numbers, with each
    number's relative distance from the best protocol at the same mode and N (0.0 for the best)."""
    rows = []
    for t in targets:
        for run in t.get("runs", []):
            s = run["summary"]
            rows.append({"target": t["name"], "protocol": t.get("protocol"), "mode": t.get("mode"), "n": run["n"],
                         "final_p95": s["final_p95"], "wer_mean": s["wer_mean"],
                         "wer_offline_mean": s.get("wer_offline_mean"), "wer_excess_mean": s.get("wer_excess_mean"),
                         "ok": s["ok"], "streams": s["streams"]})
    for row in rows:
        peers = [r for r in rows if r["mode"] == row["mode"] and r["n"] == row["n"]]
        for key in ("final_p95", "wer_mean"):
            values = [r[key] for r in peers if r[key] is not None]
            best = min(values) if values else None
            row[key + "_vs_best"] = (None if row[key] is None or not best else round(row[key] / best - 1, 4))
    return rows


def protocol_lines(targets: list[dict]) -> list[str]:
    """The comparison, one line per protocol and N, and whether each N's protocols are within 10 %."""
    rows = protocol_rows(targets)

    def f(x, unit="", digits=2):
        return "-" if x is None else f"{x:.{digits}f}{unit}"

    def pct(x):
        return "-" if x is None else f"{x * 100:+.0f} %"

    lines = []
    for row in rows:
        line = (f"{row['protocol']:<11} mode={row['mode']} N={row['n']}: p95 final {f(row['final_p95'], ' s')} "
                f"({pct(row['final_p95_vs_best'])} vs best), WER {f(row['wer_mean'], '', 3)} "
                f"({pct(row['wer_mean_vs_best'])} vs best)")
        if row["wer_offline_mean"] is not None:
            line += f", offline WER {f(row['wer_offline_mean'], '', 3)}"
        if row["ok"] != row["streams"]:
            line += f", {row['streams'] - row['ok']} of {row['streams']} streams not ok"
        lines.append(line)
    for mode, n in sorted({(r["mode"], r["n"]) for r in rows}, key=lambda k: (str(k[0]), k[1])):
        peers = [r for r in rows if r["mode"] == mode and r["n"] == n]
        worst = {key: max((r[key + "_vs_best"] for r in peers if r[key + "_vs_best"] is not None), default=None)
                 for key in ("final_p95", "wer_mean")}
        ok = all(v is not None and v <= PROTOCOL_TOLERANCE for v in worst.values())
        lines.append(f"mode={mode} N={n}: p95 spread {pct(worst['final_p95'])}, WER spread {pct(worst['wer_mean'])}"
                     f" -> {'within' if ok else 'NOT within'} {PROTOCOL_TOLERANCE:.0%} of each other")
    return lines
