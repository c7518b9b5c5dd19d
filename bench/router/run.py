"""Benchmark the router: latency it adds to each frame, and its CPU, against direct and nginx.

    python bench/router/run.py [--streams 100,500,1000] [--seconds 20] [--paths direct,router,nginx]
                               [--pods 4] [--harness go|python] [--out bench/results/router-<date>.json]

Starts, on 127.0.0.1, --pods stand-in pods (the native protocol, an immediate
per-frame ack, no model: Go's goharness cmd/standin, or with `--harness python`
bench/router/standin_pod.py), one voxfleet router
in front of them (`python -m voxfleet router ... --anonymous`) and nginx as a
sticky WebSocket proxy (`hash $arg_session consistent`), all at once; then
for each N and each path, one after the other in this one invocation, runs N
real-time streams (the load generator: goharness cmd/loadgen workers driven by
bench/router/loadgen.py, or loadgen.py's own asyncio workers) for --seconds and measures each
frame's round trip client-side, the CPU of the router process and of nginx
(master + workers) from /proc, and whether the load generator kept its
schedule. Added latency = p50/p99 through a proxy minus p50/p99 direct, at
the same N. Results are written after every phase, so an interrupted run
keeps what it measured. This is a benchmark, not a test: it asserts nothing
about time. bench/router/README.md says what each number means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the repository root, for bench.common

import loadgen  # noqa: E402
import meter  # noqa: E402
import servers  # noqa: E402
import stats  # noqa: E402
from bench.common.procstat import children_of  # noqa: E402
from bench.common.processes import raise_open_file_limit  # noqa: E402
from bench.common.provenance import git_state, machine_info  # noqa: E402
from bench.common.resultfile import save  # noqa: E402

REPO = servers.REPO
PERIOD = 0.1
"""Seconds of audio per frame, and between two frames of a stream."""
AUDIO_BYTES = 3200
"""100 ms of 16 kHz mono pcm16."""
MAX_STREAMS = 5000
GO_BUILD = Path(__file__).resolve().parent / "goharness" / "build.sh"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="100,500,1000", help="comma-separated stream counts N (default 100,500,1000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of real-time audio per stream and phase (default 20)")
    ap.add_argument("--warmup-seconds", type=float, default=2.0,
                    help="first seconds of each phase sent but not counted (default 2)")
    ap.add_argument("--paths", default="direct,router,pipe,nginx",
                    help="paths to measure at each N, in this order (default direct,router,pipe,nginx; added latency "
                         "needs direct; pipe: a bare Python TCP pipe, the floor for any proxy in Python)")
    ap.add_argument("--pods", type=int, default=4, help="stand-in pods (default 4)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="load generator processes (default: one per core)")
    ap.add_argument("--placement", default="spread", choices=("spread", "pack"),
                    help="router placement (default spread: like nginx's hash and the direct path, every pod gets a "
                         "share; pack would put every session on the first stand-in)")
    ap.add_argument("--router-arg", action="append", default=[], metavar="FLAG",
                    help="extra flag for `voxfleet router`, repeatable (e.g. --router-arg=--status-interval-seconds=2)")
    ap.add_argument("--nginx-workers", default="auto", help="nginx worker_processes (default auto: one per core)")
    ap.add_argument("--connect-concurrency", type=int, default=50,
                    help="connections each generator worker opens at once (default 50)")
    ap.add_argument("--connect-timeout", type=float, default=120.0, help="seconds for all streams of a phase to be ready")
    ap.add_argument("--rest-seconds", type=float, default=3.0, help="pause between two phases, once all is idle (default 3)")
    ap.add_argument("--harness", default="go", choices=("go", "python"),
                    help="stand-in pods and load generator: go (bench/router/goharness, built on first use; a "
                         "fraction of a core, so the proxy is not starved; falls back to python when it cannot be "
                         "built) or python (standin_pod.py and loadgen.py's asyncio workers); default go")
    ap.add_argument("--harness-sched", default="batch", choices=("batch", "normal"),
                    help="how the kernel schedules the harness against the proxy under test: batch (default: stand-ins "
                         "and generator share this process's session, hence one autogroup, and run SCHED_BATCH, so "
                         "their wake-ups do not preempt the proxy, which has a session of its own: as if clients and "
                         "pods were other machines) or normal (every server its own session, all SCHED_OTHER)")
    ap.add_argument("--out", type=Path, help="results JSON (default bench/results/router-<date>.json)")
    args = ap.parse_args(argv)
    try:
        args.n_values = sorted({int(x) for x in args.streams.split(",") if x.strip()})
    except ValueError:
        ap.error("--streams takes integers, e.g. 100,500,1000")
    if not args.n_values or min(args.n_values) < 1 or max(args.n_values) > MAX_STREAMS:
        ap.error(f"--streams must be between 1 and {MAX_STREAMS}")
    args.path_list = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in args.path_list if p not in stats.PATHS]
    if bad or not args.path_list or len(set(args.path_list)) != len(args.path_list):
        ap.error(f"--paths: choose from {', '.join(stats.PATHS)}, each once")
    if args.seconds <= 0 or args.warmup_seconds < 0 or args.warmup_seconds >= args.seconds:
        ap.error("--seconds must be > 0 and --warmup-seconds in [0, --seconds)")
    if args.pods < 1 or args.workers < 1:
        ap.error("--pods and --workers must be >= 1")
    if args.out is None:
        args.out = REPO / "bench" / "results" / f"router-{dt.datetime.now().strftime('%Y-%m-%d-%H%M')}.json"
    return args


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file limit (its children, the router and pods, inherit it)."""
    soft = raise_open_file_limit()
    if soft < needed:
        print(f"warning: open-file limit {soft} < about {needed} needed; raise `ulimit -Hn`", flush=True)
    return soft


def build_go_harness() -> tuple[str | None, str | None]:
    """(folder with the Go `standin` and `loadgen`, None), or (None, why not) when they cannot be built."""
    try:
        done = subprocess.run(["bash", str(GO_BUILD)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{GO_BUILD.name}: {exc}"
    folder = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not folder:
        return None, (done.stderr.strip() or f"{GO_BUILD.name} exited {done.returncode}")[-2000:]
    return folder, None


def autogroup_enabled() -> bool | None:
    """Whether the kernel groups tasks by session for CPU shares (None: unknown)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


def go_version() -> str | None:
    try:
        return subprocess.run(["go", "version"], capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def new_generator(args: argparse.Namespace, log_dir: Path) -> loadgen.Generator | loadgen.GoGenerator:
    yields = args.harness_sched == "batch"
    if args.harness == "go":
        return loadgen.GoGenerator(args.workers, os.path.join(args.go_dir, "loadgen"), log_dir, yields)
    return loadgen.Generator(args.workers, yields)


def router_settings(argv: list[str]) -> dict:
    """The settings the router runs with (flags, then VOXFLEET_ROUTER_* environment, then defaults)."""
    from stt_router.settings import ENV_PREFIX, RouterSettings
    from voxfleet import settings as settings_mod
    from voxfleet.cli import build_parser

    args = build_parser().parse_args(argv[3:])  # drop `python -m voxfleet`
    settings = dataclasses.asdict(settings_mod.load(RouterSettings, ENV_PREFIX, args))
    settings.pop("token_secrets", None)
    settings.pop("port", None)
    settings.pop("pods", None)
    return settings


class Fleet:
    """Everything under test, started once for the whole run."""

    def __init__(self, args: argparse.Namespace, log_dir: Path):
        self.args = args
        self.log_dir = log_dir
        binary = os.path.join(args.go_dir, "standin") if args.harness == "go" else None
        self.pods = [servers.standin(i, log_dir, binary, args.harness_sched == "batch") for i in range(args.pods)]
        self.router: servers.Proc | None = None
        self.pipe: servers.Proc | None = None
        self.nginx: servers.Proc | None = None
        self.nginx_binary: str | None = None

    def start(self) -> None:
        for pod in self.pods:
            pod.launch()
        for pod in self.pods:
            pod.wait_http_ok("/readyz", 30)
        urls = [f"ws://127.0.0.1:{p.port}" for p in self.pods]
        if "router" in self.args.path_list:
            self.router = servers.router(urls, self.args.placement, self.args.router_arg, self.log_dir)
            self.router.launch()
            self.router.wait_http_ok("/readyz", 60)
        if "pipe" in self.args.path_list:
            self.pipe = servers.pipe(urls, self.log_dir)
            self.pipe.launch()
            self.pipe.wait_port(30, interval=0.1)
        if "nginx" in self.args.path_list:
            self.nginx_binary = servers.ensure_nginx(lambda m: print(m, flush=True))
            self.nginx = servers.nginx(self.nginx_binary, [p.port for p in self.pods], self.args.nginx_workers,
                                       self.log_dir)
            servers.check_nginx_conf(self.nginx)
            self.nginx.launch()
            self.nginx.wait_port(30, interval=0.1)

    def port_for(self, path: str, i: int) -> int:
        if path == "direct":
            return self.pods[i % len(self.pods)].port
        return self.proxy(path).port

    def proxy(self, path: str) -> servers.Proc | None:
        return {"router": self.router, "pipe": self.pipe, "nginx": self.nginx}.get(path)

    def cpu_groups(self, generator: loadgen.Generator | loadgen.GoGenerator) -> dict[str, list[int]]:
        groups = {"pods": [p.pid for p in self.pods], "generator": generator.pids, "bench": [os.getpid()]}
        if self.router is not None:
            groups["router"] = [self.router.pid, *children_of(self.router.pid)]  # --workers K
        if self.pipe is not None:
            groups["pipe"] = [self.pipe.pid]
        if self.nginx is not None:
            groups["nginx"] = servers.nginx_pids(self.nginx)
        return groups

    def check_alive(self, path: str) -> str | None:
        dead = [p.name for p in self.pods if not p.alive()]
        proxy = self.proxy(path)
        if proxy is not None and not proxy.alive():
            dead.append(proxy.name)
        return f"{', '.join(dead)} exited" if dead else None

    def wait_idle(self, timeout: float) -> bool:
        """No session left on the router nor on any stand-in pod."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = False
            if self.router is not None and self.router.alive():
                s = self.router.get_json("/status")
                busy = s is None or s.get("sessions", 0) > 0
            for pod in self.pods:
                s = pod.get_json("/status")
                busy = busy or s is None or s.get("active_sessions", 0) > 0
            if not busy:
                return True
            time.sleep(0.25)
        return False

    def info(self) -> dict:
        pod_ports = [p.port for p in self.pods]
        harness = {"name": self.args.harness, "fallback_reason": self.args.harness_fallback,
                   "sched": self.args.harness_sched, "autogroup": autogroup_enabled()}
        if self.args.harness == "go":
            gomaxprocs = servers.go_maxprocs()
            harness.update(binaries=self.args.go_dir, go=go_version(),
                           generator=f"goharness cmd/loadgen (GOMAXPROCS={gomaxprocs}) x {self.args.workers}",
                           pods=f"goharness cmd/standin (GOMAXPROCS={gomaxprocs})")
        else:
            harness.update(generator=f"bench/router/loadgen.py (asyncio) x {self.args.workers}",
                           pods="bench/router/standin_pod.py")
        out = {
            "harness": harness,
            "pods": {"count": len(self.pods), "capacity": servers.STANDIN_CAPACITY,
                     "command": servers.python_argv_for_docs(self.pods[0].argv, self.pods[0].port, pod_ports)},
        }
        if self.router is not None:
            out["router"] = {"command": servers.python_argv_for_docs(self.router.argv, self.router.port, pod_ports),
                             "settings": router_settings(self.router.argv)}
        if self.pipe is not None:
            out["pipe"] = {"command": servers.python_argv_for_docs(self.pipe.argv, self.pipe.port, pod_ports)}
        if self.nginx is not None:
            conf = (self.log_dir / "nginx" / "nginx.conf").read_text()
            out["nginx"] = {"version": servers.nginx_version(self.nginx_binary), "binary": self.nginx_binary,
                            "workers": self.args.nginx_workers, "conf": conf}
        return out

    def stop(self) -> dict:
        codes = {}
        for proc in [self.router, self.pipe, self.nginx, *self.pods]:
            if proc is not None:
                codes[proc.name] = proc.stop()
        return codes


def phase_specs(fleet: Fleet, path: str, n: int, args: argparse.Namespace) -> list[loadgen.PhaseSpec]:
    frames = round(args.seconds / PERIOD)
    warmup = round(args.warmup_seconds / PERIOD)
    specs = []
    for w in range(args.workers):
        streams = [loadgen.StreamSpec(i, "127.0.0.1", fleet.port_for(path, i), f"/?session=n{n}-s{i}")
                   for i in range(w, n, args.workers)]
        specs.append(loadgen.PhaseSpec(streams, n, frames, warmup, PERIOD, AUDIO_BYTES,
                                       connect_concurrency=args.connect_concurrency,
                                       connect_timeout=args.connect_timeout, go_timeout=60.0))
    return specs


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))


def run_phase(fleet: Fleet, gen: loadgen.Generator | loadgen.GoGenerator, path: str, n: int,
              args: argparse.Namespace) -> dict:
    specs = phase_specs(fleet, path, n, args)
    phase = {"path": path, "n": n, "error": None}
    begun = time.monotonic()
    gen.start_phase(specs)
    connected = gen.wait("connected", args.connect_timeout + 30)
    phase["connect"] = {"connected": sum(c["connected"] for c in connected),
                        "seconds": max(c["connect_seconds"] for c in connected)}
    groups = fleet.cpu_groups(gen)
    t0 = time.monotonic() + 0.5
    gen.go(t0)
    _sleep_until(t0 + args.warmup_seconds)
    before = meter.sample(groups)
    _sleep_until(t0 + round(args.seconds / PERIOD) * PERIOD)
    after = meter.sample(groups)
    results = gen.wait("result", 60)
    workers = [dataclasses.asdict(r) for r in results]
    phase["summary"] = stats.summarise_phase(workers, n, PERIOD)
    phase["cpu"] = meter.cores(before, after)
    phase["wall_seconds"] = round(time.monotonic() - begun, 2)
    return phase


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the pods, the router and nginx are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fds = raise_fd_limit(3 * max(args.n_values) + 200)
    log_dir = args.out.with_suffix("")
    log_dir = log_dir.parent / (log_dir.name + "-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    args.go_dir, args.harness_fallback = None, None
    if args.harness == "go":
        args.go_dir, why = build_go_harness()
        if args.go_dir is None:
            print(f"the Go harness cannot be built, using the Python one (--harness python):\n{why}", flush=True)
            args.harness, args.harness_fallback = "python", why
        else:
            print(f"harness: Go ({args.go_dir})", flush=True)
    command = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--harness" or a.startswith("--harness=") for a in command):
        command += ["--harness", args.harness]  # the harness it ran with, for the docs' command line
    results = {
        "kind": "router-bench",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "bench/router/run.py", *command]),
        "git": git_state(),
        "machine": machine_info(),
        "config": {
            "streams": args.n_values, "seconds": args.seconds, "warmup_seconds": args.warmup_seconds,
            "paths": args.path_list, "pods": args.pods, "workers": args.workers, "placement": args.placement,
            "harness": args.harness,
            "period_seconds": PERIOD, "frame_audio_bytes": AUDIO_BYTES, "open_files_limit": fds,
            "connect_concurrency": args.connect_concurrency, "rest_seconds": args.rest_seconds,
            "target_added_p99_ms": stats.TARGET_ADDED_P99_MS, "target_cpu_ratio": stats.TARGET_CPU_RATIO,
            "min_rate_fraction": stats.MIN_RATE_FRACTION, "max_send_lag_p99_ms": stats.MAX_SEND_LAG_P99_MS,
            "hist_edges_ms": stats.HIST_EDGES_MS,
        },
        "runs": [],
    }
    out_rel = args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out
    print(f"results -> {out_rel}; logs -> {log_dir.relative_to(REPO) if log_dir.is_relative_to(REPO) else log_dir}",
          flush=True)
    fleet = Fleet(args, log_dir)
    gen = None
    try:
        print(f"starting {args.pods} stand-in pods"
              + (", the router" if "router" in args.path_list else "")
              + (", the Python pipe" if "pipe" in args.path_list else "")
              + (", nginx" if "nginx" in args.path_list else "") + " ...", flush=True)
        fleet.start()
        results["servers"] = fleet.info()
        if fleet.router is not None:
            print(f"  router: {results['servers']['router']['command']}", flush=True)
        if fleet.nginx is not None:
            print(f"  nginx {results['servers']['nginx']['version']}: workers {args.nginx_workers}, "
                  f"hash $arg_session consistent over {args.pods} pods", flush=True)
        gen = new_generator(args, log_dir)
        save(results, args.out)
        for n in args.n_values:
            run = {"n": n, "phases": {}}
            results["runs"].append(run)
            print(f"N={n}: {n} streams x {args.seconds:g} s, {n / PERIOD:.0f} frames/s "
                  f"({args.warmup_seconds:g} s warm-up not counted)", flush=True)
            for path in args.path_list:
                dead = fleet.check_alive(path)
                if dead:
                    run["phases"][path] = {"path": path, "n": n, "error": dead}
                    print(f"N={n} {path}: skipped, {dead}", flush=True)
                    continue
                try:
                    phase = run_phase(fleet, gen, path, n, args)
                except (TimeoutError, RuntimeError, OSError, EOFError) as exc:
                    phase = {"path": path, "n": n, "error": f"{type(exc).__name__}: {exc}"}
                    print(f"N={n} {path}: failed: {phase['error']}", flush=True)
                    gen.close()  # its workers may be out of step with this process: start fresh ones
                    gen = new_generator(args, log_dir)
                run["phases"][path] = phase
                save(results, args.out)
                if "summary" in phase:
                    print("  " + stats.progress_line(path, n, phase, run["phases"].get("direct")), flush=True)
                    for err in phase["summary"]["connect_errors"][:5] + phase["summary"]["stream_errors"][:5]:
                        print(f"      {err}", flush=True)
                if not fleet.wait_idle(30):
                    print(f"  sessions still open 30 s after N={n} {path}; going on", flush=True)
                time.sleep(args.rest_seconds)
            run["added"] = stats.added(run)
            save(results, args.out)
    except (KeyboardInterrupt, SystemExit):
        results["error"] = "interrupted"
        raise
    except Exception as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        print(f"failed: {results['error']}", flush=True)
        traceback.print_exc()
    finally:
        if gen is not None:
            gen.close()
        results["exit_codes"] = fleet.stop()
        results["logs"] = str(log_dir.relative_to(REPO) if log_dir.is_relative_to(REPO) else log_dir)
        results["verdict"] = stats.verdict(results)
        save(results, args.out)
    v = results["verdict"]
    if v["n"] is not None:
        met = {True: "met", False: "NOT met", None: "not judged"}
        print(f"at N={v['n']}: router p99 added {v['added_p99_ms']} ms (target <= {stats.TARGET_ADDED_P99_MS:g} ms: "
              f"{met[v['added_target_met']]}); router {v['router_cores']} cores vs nginx {v['nginx_cores']} "
              f"(ratio {v['cpu_ratio']}, target <= {stats.TARGET_CPU_RATIO:g}x: {met[v['cpu_target_met']]})", flush=True)
        if v["pipe_cores"] is not None:
            print(f"  a bare Python TCP pipe: {v['pipe_cores']} cores (the floor for a proxy in Python)", flush=True)
        if v["flags"]:
            print(f"  {len(v['flags'])} flagged phase issue(s); see the progress lines above", flush=True)
    print(f"wrote {out_rel}", flush=True)
    return 1 if results.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
