"""Trace-driven comparison of scaling policies: static peak, HPA-like, KEDA-like, voxfleet.

Every policy replays the same day of sessions (one trace per seed) on the same
simulated pool (bench/autoscale/sim.py); voxfleet's controller is the
operator's own policy function, voxfleet.autoscale.decide. Reports pod-hours,
the share of sessions that waited more than 2 s, p95 wait, refusals and
sessions cut, per scenario:

- measured: pod start-to-ready as measured on this machine
  (bench/autoscale/pod-start.json, from measure_start.py), drainTimeout 4 h
  (the pod's max session length, so that a drain never has to cut);
- slow-start: the same with 60 s pod starts (a GPU node, a larger model);
- drain-300: measured start with a short drainTimeout of 300 s (the SttPool default is the 4 h that never cuts).

    python bench/autoscale/run.py --out bench/results/autoscale.json
    python bench/autoscale/plot.py bench/results/autoscale.json --out 'docs/img/autoscale-*.png'

Bounded: three seeds x three scenarios, about 100 simulated days, a minute or
two on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from policies import HpaLike, KedaLike, Static, Voxfleet  # noqa: E402
from sim import PoolModel, simulate, summarize  # noqa: E402
from traces import TraceConfig, concurrency_peak, make_trace  # noqa: E402

from voxfleet.autoscale import PoolPolicy  # noqa: E402

MIN_REPLICAS = 2
"""Prewarmed pods of every autoscaled policy (the night load needs about two)."""
MAX_FACTOR = 1.5
"""maxReplicas = 1.5 x the static peak, so the bound never decides a comparison."""
LONG_DRAIN = 4 * 3600.0
"""drainTimeoutSeconds that never cuts: the pod's max_session_seconds."""
RATE_WINDOW = 120.0
"""Arrival and departure rates over 2 minutes (rate(...[2m]))."""
SWEEP = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
"""Target utilizations swept for the HPA-like and KEDA-like baselines."""
VOX_SWEEP = (0.7, 0.8, 0.9, 1.0)
"""Target utilizations swept for voxfleet (with VOX_STEP)."""
VOX_UTIL = PoolPolicy().target_utilization
"""voxfleet's targetUtilization: the SttPool default."""
VOX_STEP = PoolPolicy().scale_up_max_step
"""voxfleet's scaleUp.maxStep (pods per 10 s decision): the SttPool default."""
BASELINE_UTIL = 0.75
"""Utilization target of the headline HPA-like and KEDA-like rows (each family is also swept: SWEEP)."""
SERIES_POLICIES = ("static-peak", "hpa-like", "keda-like", "voxfleet")


def measured_pod_start() -> tuple[float, str]:
    path = HERE / "pod-start.json"
    try:
        data = json.loads(path.read_text())
        return float(data["median_seconds"]), (f"median of {len(data['samples_seconds'])} runs of "
                                                f"measure_start.py, {data['date']}")
    except (OSError, KeyError, ValueError):
        return 1.5, "default (bench/autoscale/pod-start.json missing: run measure_start.py)"


def vox_policy(c: int, mx: int, drain: float, start: float, util: float, step: int) -> PoolPolicy:
    return PoolPolicy(min_replicas=MIN_REPLICAS, max_replicas=mx, sessions_per_pod=c, target_utilization=util,
                      scale_up_max_step=step, drain_timeout_seconds=drain, default_pod_start_seconds=start)


def controllers(scenario: dict, static: int, mx: int) -> list:
    c, drain, start = scenario["capacity"], scenario["drain_timeout"], scenario["pod_start"]
    out = [
        ("main", Static(static)),
        ("main", HpaLike(c, MIN_REPLICAS, mx, target_utilization=BASELINE_UTIL)),
        ("main", KedaLike(c, MIN_REPLICAS, mx, target_utilization=BASELINE_UTIL)),
        ("main", Voxfleet(vox_policy(c, mx, drain, start, VOX_UTIL, VOX_STEP), c)),
    ]
    if scenario["name"] == "measured":
        out.append(("main", KedaLike(c, MIN_REPLICAS, mx, waiting_only=True, name="keda-waiting-only")))
    if scenario["sweep"]:
        for u in SWEEP:
            if u != BASELINE_UTIL:
                out.append(("sweep", HpaLike(c, MIN_REPLICAS, mx, target_utilization=u, name=f"hpa-like@{u}")))
                out.append(("sweep", KedaLike(c, MIN_REPLICAS, mx, target_utilization=u, name=f"keda-like@{u}")))
        for u in VOX_SWEEP:
            if u != VOX_UTIL:
                out.append(("sweep", Voxfleet(vox_policy(c, mx, drain, start, u, VOX_STEP), c,
                                              name=f"voxfleet@{u}")))
    return out


def run_job(job: tuple[dict, int]) -> dict:
    scenario, seed = job
    t0 = time.monotonic()
    trace = make_trace(TraceConfig(), seed)
    peak = concurrency_peak(trace)
    c = scenario["capacity"]
    static = math.ceil(peak / c)
    mx = math.ceil(static * MAX_FACTOR)
    model = PoolModel(sessions_per_pod=c, pod_start_seconds=scenario["pod_start"],
                      drain_timeout_seconds=scenario["drain_timeout"], rate_window_seconds=RATE_WINDOW)
    rows, series, waits = [], {}, {}
    for kind, ctl in controllers(scenario, static, mx):
        result = simulate(trace, model, ctl, seed)
        row = summarize(result, trace)
        row["kind"] = kind
        rows.append(row)
        w = result.waits[~np.isnan(result.waits)]
        waits[ctl.name] = w.astype(np.float32)
        if seed == scenario["series_seed"] and ctl.name in SERIES_POLICIES:
            series[ctl.name] = {k: [round(float(x), 1) if k == "t" else int(x) for x in v]
                                for k, v in result.series.items()}
    return {"scenario": scenario["name"], "seed": seed, "trace": trace.summary(), "concurrency_peak": peak,
            "static_pods": static, "max_replicas": mx, "rows": rows, "series": series, "waits": waits,
            "seconds": round(time.monotonic() - t0, 1)}


def aggregate(jobs: list[dict]) -> dict:
    """Pool the seeds: pod-hours summed, waits pooled over all sessions of all seeds."""
    by_policy: dict[str, dict] = {}
    for job in jobs:
        for row in job["rows"]:
            agg = by_policy.setdefault(row["policy"], {"policy": row["policy"], "kind": row["kind"], "seeds": 0,
                                                       "pod_hours": 0.0, "sessions": 0, "waited_over_2s": 0,
                                                       "refused": 0, "cut": 0, "pods_started": 0,
                                                       "replica_changes": 0, "peak_pods": 0, "_waits": []})
            agg["seeds"] += 1
            agg["pod_hours"] += float(row["pod_hours"])
            for k in ("sessions", "waited_over_2s", "refused", "cut", "pods_started", "replica_changes"):
                agg[k] += int(row[k])
            agg["peak_pods"] = max(agg["peak_pods"], row["peak_pods"])
            agg["_waits"].append(job["waits"][row["policy"]])
    out = {}
    for name, agg in by_policy.items():
        w = np.concatenate(agg.pop("_waits"))
        n = agg["seeds"]
        agg["pod_hours_per_day"] = round(agg.pop("pod_hours") / n, 1)
        agg["waited_over_2s_share"] = round(agg["waited_over_2s"] / agg["sessions"], 5)
        agg["p95_wait_seconds"] = round(float(np.percentile(w, 95)), 2)
        agg["p99_wait_seconds"] = round(float(np.percentile(w, 99)), 2)
        agg["pods_started_per_day"] = round(agg.pop("pods_started") / n, 1)
        agg["replica_changes_per_day"] = round(agg.pop("replica_changes") / n, 1)
        out[name] = agg
    return out


def frontier(policies: dict, family: str) -> list[dict]:
    pts = []
    for name, row in policies.items():
        base = name.split("@")[0]
        if base != family:
            continue
        if family == "voxfleet" and name == "voxfleet":
            util = VOX_UTIL
        elif "@" in name:
            util = float(name.split("@")[1])
        elif family in ("hpa-like", "keda-like"):
            util = BASELINE_UTIL
        else:
            continue
        pts.append({"target_utilization": util, "pod_hours_per_day": row["pod_hours_per_day"],
                    "waited_over_2s_share": row["waited_over_2s_share"]})
    return sorted(pts, key=lambda p: p["target_utilization"])


def interpolate_pod_hours(points: list[dict], share: float) -> float | None:
    """Pod-hours of a swept family at a given waiting share (piecewise linear between sweep points)."""
    pts = sorted((p["waited_over_2s_share"], p["pod_hours_per_day"]) for p in points)
    for (s0, h0), (s1, h1) in zip(pts, pts[1:]):
        if s0 <= share <= s1:
            return h0 if s1 == s0 else h0 + (share - s0) / (s1 - s0) * (h1 - h0)
    return None


def targets(policies: dict, sweep_hpa: list[dict]) -> dict:
    vox, static, hpa = policies["voxfleet"], policies["static-peak"], policies["hpa-like"]
    saving = 1 - vox["pod_hours_per_day"] / static["pod_hours_per_day"]
    at_equal = interpolate_pod_hours(sweep_hpa, vox["waited_over_2s_share"]) if sweep_hpa else None
    direct = vox["waited_over_2s_share"] <= hpa["waited_over_2s_share"] and \
        vox["pod_hours_per_day"] < hpa["pod_hours_per_day"]
    return {
        "waited_over_2s_at_most_1pct": vox["waited_over_2s_share"] <= 0.01,
        "pod_hours_saving_vs_static": round(saving, 3),
        "at_least_40pct_fewer_pod_hours_than_static": saving >= 0.40,
        "fewer_pod_hours_and_no_more_waiting_than_hpa_like": direct,
        "hpa_like_pod_hours_at_voxfleet_waiting": None if at_equal is None else round(at_equal, 1),
        "fewer_pod_hours_than_hpa_like_at_equal_waiting": None if at_equal is None
        else vox["pod_hours_per_day"] < at_equal,
        "zero_cut": vox["cut"] == 0,
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "autoscale.json")
    ap.add_argument("--seeds", default="1,2,3", help="trace seeds, comma-separated")
    ap.add_argument("--capacity", type=int, default=8, help="sessions per pod (ARCHITECTURE.md's target)")
    ap.add_argument("--pod-start", type=float, default=None,
                    help="pod start-to-ready seconds (default: bench/autoscale/pod-start.json)")
    ap.add_argument("--slow-start", type=float, default=60.0, help="pod start of the slow-start scenario")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    measured, source = measured_pod_start()
    start = args.pod_start if args.pod_start is not None else measured
    if args.pod_start is not None:
        source = "--pod-start"
    scenarios = [
        {"name": "measured", "pod_start": start, "drain_timeout": LONG_DRAIN, "sweep": True},
        {"name": "slow-start", "pod_start": args.slow_start, "drain_timeout": LONG_DRAIN, "sweep": True},
        {"name": "drain-300", "pod_start": start, "drain_timeout": 300.0, "sweep": False},
    ]
    for s in scenarios:
        s["capacity"] = args.capacity
        s["series_seed"] = seeds[0]
    jobs = [(s, seed) for s in scenarios for seed in seeds]
    print(f"autoscale bench: {len(jobs)} simulated days ({len(scenarios)} scenarios x {len(seeds)} seeds), "
          f"pod start {start:.2f} s ({source}), {args.capacity} sessions/pod, {args.jobs} processes",
          file=sys.stderr, flush=True)
    t0 = time.monotonic()
    done = []
    with multiprocessing.Pool(args.jobs) as pool:
        for k, res in enumerate(pool.imap_unordered(run_job, jobs), 1):
            done.append(res)
            print(f"  [{k}/{len(jobs)}] {res['scenario']:10s} seed {res['seed']}: {len(res['rows'])} policies, "
                  f"{res['trace']['sessions']} sessions, {res['seconds']:.1f} s", file=sys.stderr, flush=True)
    results = {
        "bench": "autoscale",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "commit": git_commit(),
        "command": "python bench/autoscale/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "wall_seconds": round(time.monotonic() - t0, 1),
        "seeds": seeds,
        "pod_start": {"seconds": start, "source": source},
        "settings": {"capacity": args.capacity, "min_replicas": MIN_REPLICAS, "max_factor": MAX_FACTOR,
                     "rate_window_seconds": RATE_WINDOW, "voxfleet_target_utilization": VOX_UTIL,
                     "voxfleet_scale_up_max_step": VOX_STEP, "baseline_target_utilization": BASELINE_UTIL,
                     "model": PoolModel().__dict__ | {"rate_window_seconds": RATE_WINDOW}},
        "scenarios": [],
    }
    for s in scenarios:
        mine = sorted((j for j in done if j["scenario"] == s["name"]), key=lambda j: j["seed"])
        policies = aggregate(mine)
        fronts = {f: frontier(policies, f) for f in ("hpa-like", "keda-like", "voxfleet")} if s["sweep"] else {}
        results["scenarios"].append({
            "name": s["name"], "pod_start_seconds": s["pod_start"], "drain_timeout_seconds": s["drain_timeout"],
            "capacity": s["capacity"],
            "traces": [{"seed": j["seed"], **{k: j["trace"][k] for k in ("sessions", "burst_sessions",
                                                                         "mean_session_seconds",
                                                                         "p99_session_seconds")},
                        "concurrency_peak": j["concurrency_peak"], "static_pods": j["static_pods"],
                        "max_replicas": j["max_replicas"]} for j in mine],
            "per_seed": [{"seed": j["seed"], "rows": j["rows"]} for j in mine],
            "policies": policies,
            "frontier": fronts,
            "targets": targets(policies, fronts.get("hpa-like", [])),
            "series_seed": s["series_seed"],
            "series": next(j["series"] for j in mine if j["seed"] == s["series_seed"]),
        })
    results["trace_config"] = mine[0]["trace"]["config"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, separators=(",", ":"), default=float) + "\n")
    for sc in results["scenarios"]:
        print(f"\n{sc['name']} (pod start {sc['pod_start_seconds']:.1f} s, drainTimeout "
              f"{sc['drain_timeout_seconds']:.0f} s), {len(seeds)} seeds:")
        for name, row in sc["policies"].items():
            if row["kind"] == "main":
                print(f"  {name:24s} {row['pod_hours_per_day']:7.1f} pod-h/day  waited>2s "
                      f"{100 * row['waited_over_2s_share']:6.3f}%  p95 {row['p95_wait_seconds']:5.2f} s  "
                      f"refused {row['refused']:5d}  cut {row['cut']:4d}")
        print(f"  targets: {sc['targets']}")
    print(f"\nwrote {args.out} in {results['wall_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
