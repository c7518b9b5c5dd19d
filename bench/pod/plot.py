"""Figure, table and headline from a bench/pod/run.py results file.

    python bench/pod/plot.py RESULTS.json [--out docs/img/pod-latency.png] [--docs docs/benchmarks.md]

Draws final latency (p50, p95) against N for each target with the 3 s target
line, then WER and server CPU against N; prints the headline (the largest N
each target sustains, see stats.headline); and writes the table, headline,
machine, model, date and command into docs/benchmarks.md between
<!-- pod-bench:start --> and <!-- pod-bench:end --> (WhisperLive-protocol
results between <!-- pod-bench-whisperlive:start/end -->, a `run.py --protocols`
comparison between <!-- pod-protocols:start/end --> with a table of protocol, N,
p95 final latency, mean WER and WER over offline), creating the file or the
section if missing and leaving everything else in it untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the repository root, for bench.common

import stats  # noqa: E402
from bench.common import docsection  # noqa: E402
from bench.common.provenance import REPO, repo_relative  # noqa: E402

DOCS_INTRO = """# Benchmarks

Every number on this page comes from a script in `bench/` that anyone can rerun;
each section says which machine, which model and which command produced it.
The sections between `<!-- ...:start -->` and `<!-- ...:end -->` markers are
generated (`bench/pod/plot.py`): change the scripts or rerun them, do not edit
the text by hand.
"""
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


SECTIONS = {"native": "pod-bench", "whisperlive": "pod-bench-whisperlive", "realtime": "pod-bench-realtime",
            "protocols": "pod-protocols"}
IMAGES = {"native": "pod-latency.png", "whisperlive": "pod-whisperlive.png", "realtime": "pod-realtime.png",
          "protocols": "pod-protocols.png"}


def markers(protocol: str) -> tuple[str, str]:
    return docsection.markers(SECTIONS.get(protocol, "pod-bench-whisperlive"))


def default_image(protocol: str) -> Path:
    return REPO / "docs" / "img" / IMAGES.get(protocol, "pod-whisperlive.png")


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    native = results["protocol"] in ("native", "realtime", "protocols")
    what = "final" if native else "completed-segment"
    fig, (ax_lat, ax_wer, ax_cpu) = plt.subplots(1, 3, figsize=(15, 4.6))
    for i, target in enumerate(results["targets"]):
        runs = sorted(target["runs"], key=lambda r: r["n"])
        if not runs:
            continue
        color = COLORS[i % len(COLORS)]
        n = [r["n"] for r in runs]

        def col(key, runs=runs):
            return [r["summary"][key] if r["summary"][key] is not None else float("nan") for r in runs]

        ax_lat.plot(n, col("final_p95"), "o-", color=color, label=f"{target['name']} p95")
        ax_lat.plot(n, col("final_p50"), "o--", color=color, alpha=0.6, label=f"{target['name']} p50")
        ax_wer.plot(n, col("wer_mean"), "o-", color=color, label=f"{target['name']} mean")
        ax_wer.plot(n, col("wer_worst"), "v:", color=color, alpha=0.6, label=f"{target['name']} worst stream")
        ax_cpu.plot(n, [r["cpu"]["server_cores"] if r.get("cpu") else float("nan") for r in runs], "o-",
                    color=color, label=target["name"])
    offline = _offline_by_n(results)
    if offline:
        ax_wer.plot([n for n, _ in offline], [w for _, w in offline], "s-", color="gray", alpha=0.5,
                    label="same streams offline")
    ax_lat.axhline(stats.TARGET_P95_SECONDS, color="black", linestyle=":", linewidth=1,
                   label=f"target p95 {stats.TARGET_P95_SECONDS:g} s")
    ax_lat.set(title=f"{what} latency", xlabel="concurrent real-time streams (N)", ylabel="seconds")
    ax_lat.set_ylim(bottom=0)
    ax_wer.set(title="WER of each stream's transcript", xlabel="concurrent real-time streams (N)", ylabel="WER")
    ax_wer.set_ylim(bottom=0)
    nproc = results["machine"].get("nproc")
    if nproc:
        ax_cpu.axhline(nproc, color="black", linestyle=":", linewidth=1, label=f"{nproc} cores")
    ax_cpu.set(title="server CPU", xlabel="concurrent real-time streams (N)", ylabel="cores used")
    ax_cpu.set_ylim(bottom=0)
    all_n = sorted({r["n"] for t in results["targets"] for r in t["runs"]})
    for ax in (ax_lat, ax_wer, ax_cpu):
        if all_n:
            ax.set_xticks(all_n)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"{_title(results)} - {m['nproc']} x {m['cpu_model']}, {results['date'][:10]}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _title(results: dict) -> str:
    if results["protocol"] == "native":
        return "One voxfleet pod, native protocol"
    if results["protocol"] == "realtime":
        return "One voxfleet pod, OpenAI Realtime protocol"
    if results["protocol"] == "protocols":
        return "One voxfleet pod, three protocols: " + ", ".join(results.get("protocols", []))
    return "WhisperLive protocol: WhisperLive 0.10.0 and voxfleet"


def _offline_by_n(results: dict) -> list[tuple[int, float]]:
    offline = {s["index"]: s.get("offline_wer") for s in results.get("scripts", [])}
    if not offline or any(v is None for v in offline.values()):
        return []
    ns = sorted({r["n"] for t in results["targets"] for r in t["runs"]})
    return [(n, sum(offline[i] for i in range(n)) / n) for n in ns if all(i in offline for i in range(n))]


def _fmt(x, digits=2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def headlines(results: dict) -> list[tuple[str, dict]]:
    return [(t["name"], stats.headline(t)) for t in results["targets"]]


def headline_text(results: dict) -> str:
    parts = []
    for name, h in headlines(results):
        if h["sustained_n"] is None:
            parts.append(f"**{name}**: none of the N tested")
        else:
            beyond = f" (fails at N={h['first_failure']['n']}: {h['first_failure']['why']})" if h["first_failure"] else \
                " (every N tested passed)"
            parts.append(f"**{name}**: N={h['sustained_n']}{beyond}")
    what = "final" if results["protocol"] in ("native", "realtime", "protocols") else "completed-segment"
    key = headlines(results)[0][1]["wer_key"] if results["targets"] else "wer_mean"
    wer_rule = ("mean WER, each stream taken relative to the same file transcribed offline, within "
                f"{stats.WER_TOLERANCE:g} of its N=1 value" if key == "wer_excess_mean"
                else f"mean WER within {stats.WER_TOLERANCE:g} of its N=1 WER")
    return (f"Largest N sustained with p95 {what} latency <= {stats.TARGET_P95_SECONDS:g} s, {wer_rule}, "
            f"nothing refused or failed (and every smaller N passing): " + "; ".join(parts) + ".")


def table(results: dict) -> str:
    native = results["protocol"] in ("native", "realtime", "protocols")
    label = "target" if results["protocol"] == "protocols" else "mode" if native else "server"
    what = "final" if native else "completed"
    head = [label, "N", "segments", f"p50 {what} (s)", f"p95 {what} (s)", f"max {what} (s)"]
    if native:
        head += ["partial gap p95 (s)"]
    head += ["WER mean", "WER worst", "WER over offline", "refused", "failed", "server CPU (cores)", "other CPU (cores)"]
    if native or any(r.get("pod_metrics") for t in results["targets"] for r in t["runs"]):
        head += ["pod batch mean", "pod compute s / audio s", "partials dropped"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in results["targets"]:
        for r in sorted(t["runs"], key=lambda r: r["n"]):
            s, cpu, m = r["summary"], r.get("cpu") or {}, r.get("pod_metrics") or {}
            row = [t["name"], str(r["n"]), str(s["finals"]), _fmt(s["final_p50"]), _fmt(s["final_p95"]),
                   _fmt(s["final_max"])]
            if native:
                row += [_fmt(s["partial_gap_p95"])]
            excess = s.get("wer_excess_mean")
            row += [_fmt(s["wer_mean"], 3), _fmt(s["wer_worst"], 3), "–" if excess is None else f"{excess:+.3f}",
                    str(s["refused"]), str(s["errors"]), _fmt(cpu.get("server_cores")), _fmt(cpu.get("other_cores"))]
            if len(head) > len(row):
                row += [_fmt(m.get("batch_size_mean")), _fmt(m.get("compute_per_audio_second"), 3),
                        "–" if m.get("partials_dropped") is None else f"{m['partials_dropped']:g}"]
            rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


LATENCY_DEFINITIONS = {
    "native": "arrival of the final minus the stream time of its `end` (its last word's end)",
    "whisperlive": "arrival of a completed segment minus the stream time of its `end`",
    "realtime": "arrival of `...input_audio_transcription.completed` minus the stream time where the item's "
                "audio ends: its `speech_stopped` `audio_end_ms`{shift} (the end of audio for the item the final "
                "commit closed)",
}


def protocols_table(results: dict) -> str:
    """The --protocols comparison: protocol, N, p95 final latency, mean WER, vs offline, and the spread to the
    best protocol at the same mode and N (issue #19 asks for within 10 %)."""
    rows = stats.protocol_rows(results["targets"])
    modes = {r["mode"] for r in rows}
    head = (["mode"] if len(modes) > 1 else []) + ["protocol", "N", "p95 final latency (s)", "vs best",
                                                   "mean WER", "vs best", "WER vs offline", "streams ok"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(x):
        return "–" if x is None else f"{x * 100:+.0f} %"

    for r in rows:
        excess = r["wer_excess_mean"]
        row = ([r["mode"]] if len(modes) > 1 else []) + [
            r["protocol"], str(r["n"]), _fmt(r["final_p95"]), pct(r["final_p95_vs_best"]), _fmt(r["wer_mean"], 3),
            pct(r["wer_mean_vs_best"]), "–" if excess is None else f"{excess:+.3f}", f"{r['ok']}/{r['streams']}"]
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def protocols_text(results: dict) -> str:
    lines = [line for line in stats.protocol_lines(results["targets"]) if line.startswith("mode=")]
    shift = ("" if results["config"].get("realtime_latency") == "audio-end"
             else " minus the session's `silence_duration_ms` (the VAD's end of speech, like the native `end`)")
    defs = "; ".join(f"{p}: {LATENCY_DEFINITIONS[p].format(shift=shift)}" for p in results.get("protocols", [])
                     if p in LATENCY_DEFINITIONS)
    mode = results["targets"][0].get("mode") if results["targets"] else "?"
    return (f"Same stream scripts over each protocol, a fresh `{mode}` pod per protocol, one after the other. "
            f"Final latency per protocol: {defs}. "
            + " ".join(f"{line}." for line in lines))


def section(results: dict, image: Path, docs: Path, results_path: Path, plot_command: str) -> str:
    m = results["machine"]
    start, end = markers(results["protocol"])
    targets = results["targets"]
    models = sorted({f"{t.get('model', '?')} ({t.get('compute_type', '?')}, {t.get('device', '?')})" for t in targets})
    beams = ", ".join(f"{t['name']} {t.get('beam_size', '?')}"
                      + (f" (finals {t['final_beam_size']})" if t.get("final_beam_size") else "") for t in targets)
    servers = "; ".join(f"`{t['name']}`: {t.get('server', '?')}, `{t.get('command', '?')}`" for t in targets)
    git = results.get("git", {})
    noisy = [f"{t['name']} N={r['n']} ({r['cpu']['other_cores']:.2f})" for t in targets for r in t["runs"]
             if r.get("cpu") and r["cpu"]["other_cores"] > 0.25]
    c = results["config"]
    image_rel = os.path.relpath(image, docs.parent)
    lines = [
        start,
        f"### {_title(results)}",
        "",
        f"- Machine: {m['nproc']} x {m['cpu_model']}, {m['memory_gib']} GiB memory, Linux {m['kernel']}, Python {m['python']}",
        f"- Model: {', '.join(models)}; beam width: {beams}",
        f"- Date: {results['date']}; git {git.get('commit', '?')[:12]}{' (with local changes)' if git.get('dirty') else ''}",
        "- Load: N concurrent real-time streams of "
        + ("recordings of people (tests/data/devset clips, 0.8 s apart, in a different order per stream)"
           if c.get("speech") == "devset" else "espeak-ng speech (tests/speech.py), each a different text and voice")
        + f", >= {c['seconds_per_stream']:g} s per stream, starts {c['stagger_seconds']:g} s apart; "
        f"hard cap {c['cap_factor']:g}x the audio per N"
        + (f"; `END_OF_AUDIO` after {c['linger_seconds']:g} s without new text" if c.get("linger_seconds") else ""),
        f"- Servers: {servers}",
        f"- Command: `{results['command']}`, then `{plot_command}`",
        f"- Raw results: `{repo_relative(results_path)}` (git-ignored; keep it with the figure if you publish one)",
    ]
    if noisy:
        lines.append(f"- **Warning:** other processes used CPU during {', '.join(noisy)} (cores): these numbers are not clean.")
    lines += [
        "",
        f"![{_title(results)}]({image_rel})",
        "",
        *((protocols_text(results), "", protocols_table(results), "", "All numbers per target:", "")
          if results["protocol"] == "protocols" else ()),
        headline_text(results),
        "",
        table(results),
        "",
        "What each number means: bench/pod/README.md.",
        end,
    ]
    return "\n".join(lines)


def update_docs(docs: Path, protocol: str, text: str) -> None:
    docsection.replace_section(docs, *markers(protocol), text, DOCS_INTRO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results JSON written by bench/pod/run.py")
    ap.add_argument("--out", type=Path, help="figure (default docs/img/pod-latency.png, "
                                             "docs/img/pod-whisperlive.png for WhisperLive-protocol results)")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md",
                    help="markdown file to update (a --protocols run: section pod-protocols)")
    ap.add_argument("--no-docs", action="store_true", help="draw and print only")
    args = ap.parse_args(argv)
    results = json.loads(args.results.read_text())
    out = args.out or default_image(results["protocol"])
    plot(results, out)
    print(f"wrote {repo_relative(out)}")
    print(headline_text(results).replace("**", ""))
    if results["protocol"] == "protocols":
        print("\n".join(stats.protocol_lines(results["targets"])))
    if not args.no_docs:
        command = shlex.join(["python", "bench/pod/plot.py", repo_relative(args.results), "--out", repo_relative(out)])
        update_docs(args.docs, results["protocol"], section(results, out.resolve(), args.docs.resolve(), args.results, command))
        print(f"updated {repo_relative(args.docs)} between {' and '.join(markers(results['protocol']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
