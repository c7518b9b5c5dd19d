"""Plots and the docs section for bench/autoscale/run.py's results.

    python bench/autoscale/plot.py bench/results/autoscale.json --out 'docs/img/autoscale-*.png'

Draws, per scenario with time series, pods and queue over the day for each
policy (autoscale-<scenario>.png), and the pod-hours / waiting trade-off of
every swept configuration (autoscale-frontier.png). Then rewrites the section
of docs/benchmarks.md between <!-- autoscale-bench:start --> and
<!-- autoscale-bench:end --> (appending the markers if absent), re-reading the
file just before writing and leaving every other section alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the repository root, for bench.common

from bench.common.docsection import markers, replace_section  # noqa: E402
from bench.common.provenance import REPO  # noqa: E402

START, END = markers("autoscale-bench")
LABELS = {"static-peak": "static (peak)", "hpa-like": "HPA-like", "keda-like": "KEDA-like", "voxfleet": "voxfleet"}
COLORS = {"static-peak": "#7f7f7f", "hpa-like": "#1f77b4", "keda-like": "#9467bd", "voxfleet": "#d62728"}
SCENARIO_TEXT = {
    "measured": "pod start as measured on this machine, drainTimeout 4 h",
    "slow-start": "60 s pod start, drainTimeout 4 h",
    "drain-300": "pod start as measured, drainTimeout 300 s (a short drain; the SttPool default is 4 h)",
}


def out_path(pattern: str, name: str) -> Path:
    return Path(pattern.replace("*", name)) if "*" in pattern else Path(pattern).with_name(
        f"{Path(pattern).stem}-{name}{Path(pattern).suffix or '.png'}")


def _panel(ax, sc: dict, name: str, lo: float, hi: float, ymax: float, qmax: float):
    s = sc["series"][name]
    hours = np.array(s["t"]) / 3600.0
    keep = (hours >= lo - 0.05) & (hours <= hi + 0.05)
    h = hours[keep]
    need = np.array(s["active"])[keep] / sc["capacity"]
    ax.fill_between(h, 0, need, step="post", color="#cccccc", label=f"sessions ÷ {sc['capacity']} (pods needed)")
    ax.step(h, np.array(s["pods"])[keep], where="post", color=COLORS[name], lw=1.3,
            label="pods (any state; colour per policy)")
    ax.step(h, np.array(s["ready"])[keep], where="post", color="black", lw=0.7, ls="--", alpha=0.7,
            label="warm pods taking sessions")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, ymax)
    ax.grid(alpha=0.3)
    q = ax.twinx()
    q.fill_between(h, 0, np.array(s["queue_max"])[keep], step="post", color="#ff7f0e", alpha=0.6, lw=0,
                   label="sessions queued (max per minute)")
    q.set_ylim(0, qmax)
    q.tick_params(axis="y", colors="#c05000", labelsize=8)
    return q


def plot_day(sc: dict, path: Path) -> None:
    series = sc["series"]
    names = [n for n in LABELS if n in series]
    qmax = max(max(series[n]["queue_max"]) for n in names) * 1.15 or 1
    ymax = max(max(series[n]["pods"]) for n in names) * 1.08
    # Zoom on the moment of highest demand (the biggest burst).
    ref = series[names[0]]
    t_peak = ref["t"][int(np.argmax(ref["active"]))] / 3600.0
    lo, hi = max(0.0, t_peak - 0.3), min(24.0, t_peak + 1.2)
    fig, axes = plt.subplots(len(names), 2, figsize=(14, 2.5 * len(names) + 1.0), sharey="row",
                             gridspec_kw={"width_ratios": [3, 1.25]})
    for i, name in enumerate(names):
        row = sc["policies"][name]
        left, right = axes[i]
        _panel(left, sc, name, 0, 24, ymax, qmax)
        q = _panel(right, sc, name, lo, hi, ymax, qmax)
        q.set_ylabel("queued", color="#c05000")
        left.set_ylabel("pods")
        left.set_xticks(range(0, 25, 2))
        left.set_title(f"{LABELS[name]}: {row['pod_hours_per_day']:.0f} pod-h/day, "
                       f"{100 * row['waited_over_2s_share']:.2f} % waited > 2 s, {row['cut']} cut "
                       f"(means of {row['seeds']} seeds)", loc="left", fontsize=10)
        right.set_title(f"zoom {lo:.1f}–{hi:.1f} h", loc="left", fontsize=9)
        if i < len(names) - 1:
            left.tick_params(labelbottom=False)
            right.tick_params(labelbottom=False)
    axes[-1][0].set_xlabel(f"hour of the day (trace seed {sc['series_seed']})")
    axes[-1][1].set_xlabel("hour")
    h1, l1 = axes[0][0].get_legend_handles_labels()
    h2, l2 = q.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="upper center", ncol=4, frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 0.955))
    fig.suptitle(f"Pods and queue over one simulated day: pod start {sc['pod_start_seconds']:.1f} s, "
                 f"drainTimeout {sc['drain_timeout_seconds'] / 3600:g} h, {sc['capacity']} sessions per pod",
                 y=0.99, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_frontier(results: dict, path: Path) -> None:
    scs = [sc for sc in results["scenarios"] if sc["frontier"]]
    fig, axes = plt.subplots(1, len(scs), figsize=(6.2 * len(scs), 4.8))
    for ax, sc in zip(np.atleast_1d(axes), scs):
        for family, pts in sc["frontier"].items():
            x = [100 * p["waited_over_2s_share"] for p in pts]
            y = [p["pod_hours_per_day"] for p in pts]
            ax.plot(x, y, "o-", color=COLORS[family], label=LABELS[family], ms=5)
            for p, xi, yi in zip(pts, x, y):
                ax.annotate(f"{p['target_utilization']:.2f}", (xi, yi), textcoords="offset points", xytext=(5, 3),
                            fontsize=7, color=COLORS[family])
        vox = sc["policies"]["voxfleet"]
        ax.plot([100 * vox["waited_over_2s_share"]], [vox["pod_hours_per_day"]], "*", ms=15, color=COLORS["voxfleet"],
                mec="black", label="voxfleet headline config")
        static = sc["policies"]["static-peak"]["pod_hours_per_day"]
        ax.set_title(f"{sc['name']}: {SCENARIO_TEXT.get(sc['name'], '')}\n(static peak: {static:.0f} pod-h/day, "
                     f"0 % waited; off the chart)", fontsize=10)
        ax.axvline(1.0, color="black", ls=":", lw=1)
        ax.text(1.0, ax.get_ylim()[0], " target: at most 1 %", va="bottom", fontsize=8)
        ax.set_xlabel("sessions that waited > 2 s (%)")
        ax.set_ylabel("pod-hours per day (mean of seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Pod-hours against waiting; numbers at the points are target utilizations "
                 "(lower-left is better)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x: float) -> str:
    return f"{100 * x:.3f} %"


def table(sc: dict) -> str:
    lines = ["| policy | pod-hours/day | vs static | waited > 2 s | p95 wait | p99 wait | refused | cut | "
             "pods started/day |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    static = sc["policies"]["static-peak"]["pod_hours_per_day"]
    for name, row in sc["policies"].items():
        if row["kind"] != "main":
            continue
        rel = "—" if name == "static-peak" else f"{row['pod_hours_per_day'] / static - 1:+.0%}"
        lines.append(f"| {name} | {row['pod_hours_per_day']:.1f} | {rel} | "
                     f"{_pct(row['waited_over_2s_share'])} | {row['p95_wait_seconds']:.2f} s | "
                     f"{row['p99_wait_seconds']:.2f} s | {row['refused']} | {row['cut']} | "
                     f"{row['pods_started_per_day']:.0f} |")
    return "\n".join(lines)


def verdict(sc: dict) -> str:
    t = sc["targets"]
    vox, hpa = sc["policies"]["voxfleet"], sc["policies"]["hpa-like"]
    yes = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    lines = [
        f"- at most 1 % of sessions wait over 2 s: {_pct(vox['waited_over_2s_share'])}: "
        f"{yes(t['waited_over_2s_at_most_1pct'])}",
        f"- at least 40 % fewer pod-hours than static peak: {t['pod_hours_saving_vs_static']:.0%} fewer: "
        f"{yes(t['at_least_40pct_fewer_pod_hours_than_static'])}",
    ]
    hp = t["hpa_like_pod_hours_at_voxfleet_waiting"]
    direct = (f"{vox['pod_hours_per_day']:.1f} against {hpa['pod_hours_per_day']:.1f} pod-h/day with "
              f"{_pct(vox['waited_over_2s_share'])} against {_pct(hpa['waited_over_2s_share'])} waiting")
    lines.append(f"- fewer pod-hours than HPA-like at equal or better waiting: {direct}: "
                 f"{yes(t['fewer_pod_hours_and_no_more_waiting_than_hpa_like'])}"
                 + (f"; HPA-like swept to voxfleet's waiting would need {hp:.1f} pod-h/day "
                    f"({vox['pod_hours_per_day'] / hp - 1:+.1%} for voxfleet)" if hp else ""))
    lines.append(f"- zero sessions cut: {vox['cut']}: {yes(t['zero_cut'])}")
    return "\n".join(lines)


def _drain_cost(sc: dict) -> float:
    return (sc["measured"]["policies"]["voxfleet"]["pod_hours_per_day"]
            - sc["drain-300"]["policies"]["voxfleet"]["pod_hours_per_day"])


def findings(results: dict) -> str:
    """Plain statements computed from the numbers, so a rerun cannot leave stale prose behind."""
    out = []
    for sc in results["scenarios"]:
        p = sc["policies"]
        vox, hpa, keda, static = p["voxfleet"], p["hpa-like"], p["keda-like"], p["static-peak"]
        vs = lambda a, b: f"{a['pod_hours_per_day'] / b['pod_hours_per_day'] - 1:+.1%}"  # noqa: E731
        wait = lambda r: _pct(r["waited_over_2s_share"])  # noqa: E731
        line = (f"- {sc['name']} (pod start {sc['pod_start_seconds']:.1f} s, drainTimeout "
                f"{_duration(sc['drain_timeout_seconds'])}): voxfleet {vox['pod_hours_per_day']:.1f} pod-h/day, "
                f"{vs(vox, static)} against static peak, {vs(vox, hpa)} against HPA-like, "
                f"{vs(vox, keda)} against KEDA-like; waited > 2 s: voxfleet {wait(vox)}, HPA-like {wait(hpa)}, "
                f"KEDA-like {wait(keda)}; cut: voxfleet {vox['cut']}, HPA-like {hpa['cut']}, "
                f"KEDA-like {keda['cut']}.")
        at = sc["targets"].get("hpa_like_pod_hours_at_voxfleet_waiting")
        if at:
            line += (f" Swept to voxfleet's waiting, HPA-like would need {at:.1f} pod-h/day "
                     f"({vox['pod_hours_per_day'] / at - 1:+.1%} for voxfleet).")
        out.append(line)
    m = results["scenarios"][0]["policies"]
    burst = {}
    for sc in results["scenarios"][:2]:
        rows = [r for ps in sc["per_seed"] for r in ps["rows"] if r["policy"] == "voxfleet"]
        burst[sc["name"]] = (sum(r["burst_waited_over_2s"] for r in rows), sum(r["waited_over_2s"] for r in rows))
    zero = all(r["p95_wait_seconds"] == 0 for sc in results["scenarios"] for n, r in sc["policies"].items()
               if n != "keda-waiting-only")
    out.append(("- p95 wait is 0 s for every policy but keda-waiting-only: only a small share of sessions "
                "waits at all, so the share over 2 s is what tells the policies apart. " if zero else "- ")
               + "Of the sessions that waited over 2 s under voxfleet, "
               + ", ".join(f"{b} of {w} ({name})" for name, (b, w) in burst.items())
               + " arrived in a burst: sessions no reactive policy has pods for yet.")
    out.append(f"- voxfleet starts more pods than HPA-like ({m['voxfleet']['pods_started_per_day']:.0f} against "
               f"{m['hpa-like']['pods_started_per_day']:.0f} a day with the measured start). It adds a pod as "
               "soon as demand plus buffer needs one, and it removes drained pods one at a time. Short-lived "
               "pods cost little with fast starts. With slow starts they eat into the savings.")
    return "\n".join(out)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 and seconds % 3600 == 0 else f"{seconds:.0f} s"


def section(results: dict, images: dict[str, Path], docs: Path, results_path: Path, plot_command: str) -> str:
    rel = lambda p: os.path.relpath(p, docs.parent)  # noqa: E731
    sc = {s["name"]: s for s in results["scenarios"]}
    first = results["scenarios"][0]
    tr = first["traces"]
    sessions = ", ".join(f"{t['sessions']}" for t in tr)
    cfg = results["trace_config"]
    st = results["settings"]
    parts = [
        "### Autoscaling policies: trace-driven simulation",
        "",
        f"Machine: {results['machine']}. Date: {results['date']}. Commit: {results['commit']}. "
        f"Wall time: {results['wall_seconds']:.0f} s.",
        "",
        "```sh",
        "python bench/autoscale/measure_start.py --runs 5   # pod start-to-ready -> bench/autoscale/pod-start.json",
        results["command"].replace(str(REPO) + "/", ""),
        plot_command,
        "```",
        "",
        f"One simulated day per seed (seeds {', '.join(map(str, results['seeds']))}: {sessions} sessions), "
        f"replayed against every policy. Arrivals follow a working day "
        f"(peak {cfg['peak_arrivals_per_second']}/s, night {cfg['night_share']:.0%} of it) with "
        f"{len(cfg['bursts'])} sudden bursts of 60 to 150 sessions within {cfg['burst_spread_seconds']:.0f} s "
        f"(one at night). Session lengths are lognormal (median {cfg['median_session_seconds']:.0f} s, "
        f"sigma {cfg['session_sigma']}, p99 about {tr[0]['p99_session_seconds']:.0f} s; burst sessions median "
        f"{cfg['burst_median_session_seconds']:.0f} s), capped at the pod's 4 h limit. "
        f"Capacity {st['capacity']} sessions per pod (ARCHITECTURE.md's target; the pod benchmark will "
        f"measure the real number, `--capacity` changes it). "
        f"Pod start-to-ready {results['pod_start']['seconds']:.2f} s: "
        f"{results['pod_start']['source']} (`python -m voxfleet pod` to `/readyz` 200 on this machine; "
        f"a cluster adds scheduling and probes, hence the 60 s scenario). "
        f"Static peak is sized with hindsight: ceil(peak concurrent sessions / capacity) "
        f"= {', '.join(str(t['static_pods']) for t in tr)} pods.",
        "",
        "What it shows:",
        "",
        findings(results),
        "",
        f"#### Pod start as measured ({first['pod_start_seconds']:.2f} s), drainTimeout 4 h",
        "",
        table(first),
        "",
        "Targets (voxfleet row):",
        "",
        verdict(first),
        "",
    ]
    if "slow-start" in sc:
        s2 = sc["slow-start"]
        parts += ["#### 60 s pod start, drainTimeout 4 h", "", table(s2), "", "Targets (voxfleet row):", "",
                  verdict(s2), ""]
    if "drain-300" in sc:
        s3 = sc["drain-300"]
        parts += ["#### drainTimeout 300 s (a short drain; the SttPool default is 4 h), pod start as measured", "", table(s3), "",
                  "With heavy-tailed sessions, a 300 s drain bound cuts the long sessions left on the pods "
                  "that are reclaimed, whichever policy reclaims them. Only a bound no shorter than the "
                  "longest allowed session (the pod's 4 h max_session_seconds) guarantees zero cuts. That "
                  f"bound costs voxfleet {_drain_cost(sc):+.1f} pod-h/day here, because drained pods wait "
                  "for their last session.", ""]
    parts += [
        f"![pods and queue over the day, measured pod start]({rel(images['measured'])})",
        "",
    ]
    if "slow-start" in images:
        parts += [f"![pods and queue over the day, 60 s pod start]({rel(images['slow-start'])})", ""]
    parts += [
        f"![pod-hours against waiting for every swept configuration]({rel(images['frontier'])})",
        "",
        "How each policy is modelled (bench/autoscale/policies.py, sim.py):",
        "",
        "- **Pool**: pods are StatefulSet ordinals. A new pod serves only once warm (start time jittered per "
        "pod, lognormal sigma 0.2). The router packs each session onto the lowest-ordinal warm pod with a "
        "free slot. Otherwise the session queues, served by priority then arrival, for at most 30 s, with at "
        "most 200 waiting (two routers' bounds); after that it is refused (and counted as waiting over 2 s). "
        "Load metrics reach every controller through a 15 s Prometheus scrape. Rates are over 2 minutes. "
        "Replicas, readiness and draining marks are read fresh.",
        "- **Scale-down and cuts**: lowering replicas sends SIGTERM to the highest ordinals. Such a pod takes "
        "no new sessions and keeps its sessions for its drain timeout, then closes the rest (*cut*). An "
        "ordinal whose old pod is still terminating cannot be recreated until that pod is gone. HPA and "
        "KEDA scale this way (the SttPool's `autoscaling.mode: external`). So they cut sessions only when "
        "a session outlives the drain timeout; their terminating pods still count as pod-hours.",
        "- **static (peak)**: the hindsight peak, all day, never waits.",
        f"- **HPA-like**: autoscaling/v2 on a pods metric (sessions per pod), target "
        f"{st['baseline_target_utilization']} x capacity, 15 s sync, 10 % tolerance. Pods not yet ready "
        "count as empty when scaling up. Scale-up at most max(100 %, 4 pods) per sync. Scale-down to the "
        "highest recommendation of the last 300 s. It cannot see the queue: full pods read as 100 %.",
        f"- **KEDA-like**: Prometheus trigger on queue length, polled every 30 s, cooldown (scale-down "
        f"stabilization) 300 s, AverageValue {st['baseline_target_utilization']} x capacity per pod, and the "
        "same HPA rules. Queue length counts sessions waiting plus sessions open, as a work-queue scaler "
        "counts messages ready plus unacknowledged. `keda-waiting-only` is the literal reading: waiting "
        "sessions only, threshold 1 per pod. It scales in when the queue empties and then refuses sessions "
        "all day, which shows why a session pool cannot scale on waiting sessions alone.",
        f"- **voxfleet**: `voxfleet.autoscale.decide` every 10 s, the operator's own policy. minReplicas "
        f"{st['min_replicas']}, buffer floor 2, targetUtilization {st['voxfleet_target_utilization']}, "
        f"scaleUp.maxStep {st['voxfleet_scale_up_max_step']}, scale-down stabilization 300 s, idleSeconds 300, "
        "scaleDown.maxStep 1. The buffer comes from the measured arrival and departure rates over the "
        "lead time: pod start plus 25 s of scrape and decision delay. Scale-down marks the highest "
        "ordinals draining, un-drains them if load returns, and lowers replicas once they are empty. "
        "targetUtilization and scaleUp.maxStep are the SttPool defaults.",
        "- The frontier figure sweeps the target utilization of each family (HPA-like and KEDA-like "
        f"{', '.join(f'{u:g}' for u in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9))}; voxfleet 0.7 to 1.0). "
        "\"HPA-like at voxfleet's waiting\" interpolates that sweep.",
        "",
        f"Raw results: `{os.path.relpath(results_path, REPO)}`.",
    ]
    return "\n".join(parts)


def update_docs(docs: Path, text: str) -> None:
    """Replace only our marked section; re-read the file right before writing."""
    replace_section(docs, START, END, f"{START}\n{text}\n{END}", "# Benchmarks\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="results JSON written by bench/autoscale/run.py")
    ap.add_argument("--out", default=str(REPO / "docs" / "img" / "autoscale-*.png"),
                    help="figure path pattern; * becomes the scenario name or 'frontier'")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md", help="markdown file to update")
    ap.add_argument("--no-docs", action="store_true", help="draw only")
    args = ap.parse_args(argv)
    results = json.loads(args.results.read_text())
    images: dict[str, Path] = {}
    for sc in results["scenarios"]:
        if sc.get("series") and sc["name"] in ("measured", "slow-start"):
            images[sc["name"]] = out_path(args.out, sc["name"])
            plot_day(sc, images[sc["name"]])
            print(f"wrote {images[sc['name']]}")
    images["frontier"] = out_path(args.out, "frontier")
    plot_frontier(results, images["frontier"])
    print(f"wrote {images['frontier']}")
    if not args.no_docs:
        rel = lambda p: os.path.relpath(Path(p).resolve(), REPO)  # noqa: E731
        cmd = f"python bench/autoscale/plot.py {rel(args.results)} --out '{rel(args.out)}'"
        update_docs(args.docs, section(results, {k: v.resolve() for k, v in images.items()}, args.docs.resolve(),
                                       args.results.resolve(), cmd))
        print(f"updated {args.docs} between {START} and {END}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
