"""Figure, table and verdict from a bench/router/run.py results file.

    python bench/router/plot.py RESULTS.json [--out docs/img/router-latency.png] [--docs docs/benchmarks.md]
    python bench/router/plot.py --placeholder        # the section says "not measured yet" and how to run it

Draws, against N: the latency each proxy adds per frame (p50, p99; the
target line), the round trip of each path (p50, p99) and the CPU of each
proxy (with the 2x-nginx target); prints the verdict; and writes machine,
date, commands, verdict and table into docs/benchmarks.md between
<!-- router-bench:start --> and <!-- router-bench:end -->, appending the
section when it is missing and leaving everything else in the file as it is
(other benchmarks own other sections: the file is read again right before
it is written).
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
from bench.common.docsection import markers, replace_section  # noqa: E402
from bench.common.provenance import REPO, repo_relative  # noqa: E402

START, END = markers("router-bench")
TITLE = "The router: latency added per frame and CPU, against direct and nginx"
DEFAULT_IMAGE = REPO / "docs" / "img" / "router-latency.png"
RUN_COMMAND = "python bench/router/run.py --streams 100,500,1000 --seconds 20 --out bench/results/router-<date>.json"
PLOT_COMMAND = "python bench/router/plot.py bench/results/router-<date>.json --out docs/img/router-latency.png"
COLORS = {"direct": "tab:gray", "router": "tab:blue", "pipe": "tab:orange", "nginx": "tab:green"}
DOCS_INTRO = """# Benchmarks

Every number on this page comes from a script in `bench/` that anyone can rerun;
each section says which machine, which model and which command produced it.
The sections between `<!-- ...:start -->` and `<!-- ...:end -->` markers are
generated: change the scripts or rerun them, do not edit the text by hand.
"""


def _nan(x):
    return float("nan") if x is None else x


def _runs(results: dict) -> list[dict]:
    return sorted(results.get("runs", []), key=lambda r: r["n"])


def _phase(run: dict, path: str) -> dict | None:
    ph = run["phases"].get(path)
    return ph if ph and "summary" in ph else None


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _runs(results)
    fig, (ax_add, ax_rtt, ax_cpu) = plt.subplots(1, 3, figsize=(15, 4.6))
    ns = [r["n"] for r in runs]
    for proxy in stats.PROXIES:
        pts = [(r["n"], stats.added(r).get(proxy)) for r in runs]
        pts = [(n, a) for n, a in pts if a is not None]
        if not pts:
            continue
        c = COLORS[proxy]
        ax_add.plot([n for n, _ in pts], [_nan(a["p99"]) for _, a in pts], "o-", color=c, label=f"{proxy} p99")
        ax_add.plot([n for n, _ in pts], [_nan(a["p50"]) for _, a in pts], "o--", color=c, alpha=0.6, label=f"{proxy} p50")
    ax_add.axhline(stats.TARGET_ADDED_P99_MS, color="black", linestyle=":", linewidth=1,
                   label=f"target: router p99 <= {stats.TARGET_ADDED_P99_MS:g} ms")
    ax_add.axhline(0, color="black", linewidth=0.5)
    ax_add.set_yscale("symlog", linthresh=1.0)  # linear within +-1 ms (noise may be negative), log beyond
    ax_add.set_ylim(top=max(ax_add.get_ylim()[1], 3 * stats.TARGET_ADDED_P99_MS))  # the target line never on the frame
    ax_add.set(title="latency added per frame (proxy minus direct)", xlabel="concurrent real-time streams (N)",
               ylabel="ms (linear below 1, log above)")
    for path in stats.PATHS:
        pts = [(r["n"], _phase(r, path)) for r in runs]
        pts = [(n, ph["summary"]["rtt_ms"]) for n, ph in pts if ph is not None]
        if not pts:
            continue
        c = COLORS[path]
        ax_rtt.plot([n for n, _ in pts], [_nan(x["p99"]) for _, x in pts], "o-", color=c, label=f"{path} p99")
        ax_rtt.plot([n for n, _ in pts], [_nan(x["p50"]) for _, x in pts], "o--", color=c, alpha=0.6, label=f"{path} p50")
    ax_rtt.set_yscale("log")
    ax_rtt.set(title="frame round trip (send to echo), per path", xlabel="concurrent real-time streams (N)", ylabel="ms")
    for proxy in stats.PROXIES:
        pts = [(r["n"], _phase(r, proxy)) for r in runs]
        pts = [(n, stats.proxy_cores(proxy, ph.get("cpu"))) for n, ph in pts if ph is not None]
        if not pts:
            continue
        ax_cpu.plot([n for n, _ in pts], [_nan(c) for _, c in pts], "o-", color=COLORS[proxy],
                    label=f"{proxy} ({_processes(results, proxy)})")
        if proxy == "nginx":
            ax_cpu.plot([n for n, _ in pts], [_nan(c) * stats.TARGET_CPU_RATIO if c is not None else float("nan")
                                              for _, c in pts], ":_", color=COLORS[proxy], markersize=14,
                        label=f"target: router <= {stats.TARGET_CPU_RATIO:g} x nginx")
    nproc = results["machine"].get("nproc")
    if nproc:
        ax_cpu.axhline(nproc, color="black", linestyle=":", linewidth=1, label=f"{nproc} cores (the machine)")
    ax_cpu.axhline(1, color="tab:blue", linestyle="-.", linewidth=0.8, alpha=0.5, label="1 core (one asyncio process)")
    ax_cpu.set(title="proxy CPU during its own phase", xlabel="concurrent real-time streams (N)", ylabel="cores used")
    ax_cpu.set_ylim(bottom=0)
    for ax in (ax_add, ax_rtt, ax_cpu):
        if ns:
            ax.set_xticks(ns)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")  # the lines rise to the right
    m = results["machine"]
    flagged = len(stats.verdict(results)["flags"])
    note = f"; {flagged} phase issue(s) flagged, see docs/benchmarks.md" if flagged else ""
    fig.suptitle(f"voxfleet router vs nginx vs direct, stand-in pods - {m['nproc']} x {m['cpu_model']}, "
                 f"{results['date'][:10]}{note}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fmt(x, digits=2, sign=False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def table(results: dict) -> str:
    head = ["N", "path", "streams ready", "rtt p50 (ms)", "rtt p99 (ms)", "rtt max (ms)", "added p50 (ms)",
            "added p99 (ms)", "proxy CPU (cores)", "pods CPU", "generator CPU", "other CPU", "sent (% of schedule)",
            "send lag p99 (ms)", "frames lost", "flags"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in _runs(results):
        add = stats.added(run)
        for path in stats.PATHS:
            ph = run["phases"].get(path)
            if ph is None:
                continue
            if "summary" not in ph:
                rows.append(f"| {run['n']} | {path} | " + " | ".join(["–"] * (len(head) - 3)) + f" | {ph.get('error')} |")
                continue
            s, cpu, a = ph["summary"], ph.get("cpu") or {}, add.get(path, {})
            frac = s["rate_fraction"]
            rows.append("| " + " | ".join([
                str(run["n"]), path, f"{s['connected']}/{s['streams']}", _fmt(s["rtt_ms"]["p50"]), _fmt(s["rtt_ms"]["p99"]),
                _fmt(s["rtt_ms"]["max"]), _fmt(a.get("p50"), sign=True), _fmt(a.get("p99"), sign=True),
                _fmt(stats.proxy_cores(path, cpu)), _fmt(cpu.get("pods_cores")), _fmt(cpu.get("generator_cores")),
                _fmt(cpu.get("other_cores")), "–" if frac is None else f"{frac * 100:.1f}",
                _fmt(s["send_lag_ms"]["p99"]), str(s["lost"]), "; ".join(stats.phase_flags(ph)) or "",
            ]) + " |")
    return "\n".join(rows)


def verdict_text(results: dict) -> str:
    v = stats.verdict(results)
    if v["n"] is None:
        return "No N was measured on direct, router and nginx: no verdict."
    met = {True: "**met**", False: "**not met**", None: "not judged"}
    text = (f"At N={v['n']} (the largest N measured): the router adds {_fmt(v['added_p99_ms'])} ms at p99 "
            f"(target <= {stats.TARGET_ADDED_P99_MS:g} ms: {met[v['added_target_met']]}); it uses "
            f"{_fmt(v['router_cores'])} cores against nginx's {_fmt(v['nginx_cores'])} "
            f"(ratio {_fmt(v['cpu_ratio'])}, target <= {stats.TARGET_CPU_RATIO:g}: {met[v['cpu_target_met']]}).")
    if v["pipe_cores"] is not None:
        text += (f" A bare Python TCP pipe (bench/router/pipe.py: epoll, no WebSocket work) uses "
                 f"{_fmt(v['pipe_cores'])} cores at the same N: the floor for a proxy in Python here.")
    if v["flags"]:
        text += f" {len(v['flags'])} phase issue(s) flagged (last column): read those rows with care."
    return text


def _processes(results: dict, proxy: str) -> str:
    """What a proxy's CPU line adds up: nginx's master and workers, the router's worker processes."""
    if proxy == "nginx":
        return "master + workers"
    workers = results.get("servers", {}).get(proxy, {}).get("settings", {}).get("workers", 1)
    return f"{workers} processes" if workers > 1 else "process"


def harness_text(harness: dict) -> str:
    if harness.get("name") == "go":
        return f"Go, `bench/router/goharness` ({harness.get('go') or 'go'})"
    return "Python, `bench/router/standin_pod.py` and `bench/router/loadgen.py`"


def sched_text(harness: dict) -> str:
    groups = {True: "autogroups on", False: "autogroups off", None: "autogroups unknown"}[harness.get("autogroup")]
    if harness.get("sched", "normal") == "batch":
        return ("stand-ins and load generator in the benchmark's session, SCHED_BATCH (their wake-ups do not preempt "
                f"the proxy, as with clients and pods on other machines); each proxy in a session of its own ({groups})")
    return f"every process SCHED_OTHER in a session of its own ({groups})"


def section(results: dict, image: Path, docs: Path, results_path: Path, plot_command: str) -> str:
    m, c, git = results["machine"], results["config"], results.get("git", {})
    srv = results.get("servers", {})
    router, nginx, pods = srv.get("router", {}), srv.get("nginx", {}), srv.get("pods", {})
    image_rel = os.path.relpath(image, docs.parent)
    lines = [
        START,
        f"### {TITLE}",
        "",
        f"- Machine: {m['nproc']} x {m['cpu_model']}, {m['memory_gib']} GiB memory, Linux {m['kernel']}, "
        f"Python {m['python']}; load average at start {m.get('load_average_at_start')}",
        f"- Date: {results['date']}; git {git.get('commit', '?')[:12]}{' (with local changes)' if git.get('dirty') else ''}",
        f"- Load: N real-time streams, each one 100 ms frame of 16 kHz pcm16 ({c['frame_audio_bytes']} bytes + 4-byte "
        f"sequence header) every {c['period_seconds'] * 1000:g} ms for {c['seconds']:g} s (first "
        f"{c['warmup_seconds']:g} s not counted), starts spread evenly over a period; {c['workers']} load generator "
        f"processes; paths one after the other at each N: {', '.join(c['paths'])}",
        f"- Pods: {pods.get('count', '?')} stand-ins (native protocol, one `ack` per frame at once, no model; "
        f"capacity {pods.get('capacity', '?')})",
        f"- Harness (stand-ins and load generator): {harness_text(srv.get('harness', {}))}",
        f"- Scheduling: {sched_text(srv.get('harness', {}))}",
        f"- Router: `{router.get('command', '-')}`",
        *([f"- Pipe (the floor, no WebSocket work): `{srv['pipe']['command']}`"] if "pipe" in srv else []),
        f"- nginx: {nginx.get('version', '-')}, `worker_processes {nginx.get('workers', '-')}`, "
        "`hash $arg_session consistent` over the same pods (config in the run's log folder)",
        f"- Command: `{results['command']}`, then `{plot_command}`",
        f"- Raw results: `{repo_relative(results_path)}` (git-ignored; keep it with the figure if you publish one)",
        "",
        f"![{TITLE}]({image_rel})",
        "",
        verdict_text(results),
        "",
        table(results),
        "",
        "What each number means: bench/router/README.md.",
        END,
    ]
    return "\n".join(lines)


def placeholder() -> str:
    return "\n".join([
        START,
        f"### {TITLE}",
        "",
        "Not measured yet. On a quiet machine:",
        "",
        "```sh",
        RUN_COMMAND,
        PLOT_COMMAND,
        "```",
        "",
        "What each number means: bench/router/README.md.",
        END,
    ])


def update_docs(docs: Path, text: str) -> None:
    """Replace only our section (append it when missing); the file is read right before it is written."""
    replace_section(docs, START, END, text, DOCS_INTRO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="?", help="a results JSON written by bench/router/run.py")
    ap.add_argument("--out", type=Path, default=DEFAULT_IMAGE, help="figure (default docs/img/router-latency.png)")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md", help="markdown file to update")
    ap.add_argument("--no-docs", action="store_true", help="draw and print only")
    ap.add_argument("--placeholder", action="store_true",
                    help="write the 'not measured yet' section (with the commands) instead of results")
    args = ap.parse_args(argv)
    if args.placeholder:
        update_docs(args.docs, placeholder())
        print(f"updated {repo_relative(args.docs)} between {START} and {END} (placeholder)")
        return 0
    if args.results is None:
        ap.error("give a results JSON (or --placeholder)")
    results = json.loads(args.results.read_text())
    plot(results, args.out)
    print(f"wrote {repo_relative(args.out)}")
    print(verdict_text(results).replace("**", ""))
    if not args.no_docs:
        command = shlex.join(["python", "bench/router/plot.py", repo_relative(args.results),
                              "--out", repo_relative(args.out)])
        update_docs(args.docs, section(results, args.out.resolve(), args.docs.resolve(), args.results, command))
        print(f"updated {repo_relative(args.docs)} between {START} and {END}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
