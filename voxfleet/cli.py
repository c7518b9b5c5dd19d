"""The `voxfleet` command: the one front door to every component.

    voxfleet pod [--port 8765 ...]        run an STT pod
    voxfleet transcribe URL FILE          stream a file, print the transcript (--file-api: upload it instead)
    voxfleet demo                         voxfleet up, transcribe the bundled sample, stop
    voxfleet router --pods ws://...       run a router in front of pods
    voxfleet up [--port 8765] [--pods 2]  run a router and local pods until Ctrl-C
    voxfleet up --min-pods 1 --max-pods 4 the same, scaled with the autoscaling policy
    voxfleet operator [run|crd] ...       the Kubernetes operator
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from importlib import resources
from pathlib import Path

from voxfleet import __version__
from voxfleet import settings as settings_mod

SAMPLE = "samples/jfk-ask-not.wav"
"""A recording of a person (public domain), with what was said beside it in a .txt file."""


def bundled_sample() -> Path:
    return Path(str(resources.files("voxfleet").joinpath(SAMPLE)))


def bundled_sample_text() -> str:
    return bundled_sample().with_suffix(".txt").read_text(encoding="utf-8").strip()


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))


def cmd_pod(args: argparse.Namespace) -> int:
    from stt_pod.engine import locate_model
    from stt_pod.server import run_pod
    from stt_pod.settings import ENV_PREFIX, PodSettings

    pod_settings = settings_mod.load(PodSettings, ENV_PREFIX, args)
    pod_settings.validate()
    locate_model(pod_settings.model)  # a missing model is one line here, not a traceback after binding
    _logging(pod_settings.log_level)
    try:
        asyncio.run(run_pod(pod_settings))
    except OSError as exc:  # a port in use, an address not on this machine
        print(f"voxfleet pod: cannot listen on {pod_settings.host}:{pod_settings.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    return 0


SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def cmd_transcribe(args: argparse.Namespace) -> int:
    from voxfleet.client import TranscriptionError, check_url, stdin_audio, transcribe
    from voxfleet.protocol import AudioFormat

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    live_line = sys.stderr.isatty()  # a partial rewrites its line on a terminal; in a pipe each is a line

    async def run() -> None:
        check_url(args.url)
        if getattr(args, "file_api", False):
            return await upload()
        audio = args.file
        if str(args.file) == "-":
            if args.rate <= 0 or args.channels <= 0:
                raise ValueError("--rate and --channels must be positive")
            audio = stdin_audio(AudioFormat(args.rate, args.encoding, args.channels))
        async for result in transcribe(args.url, audio, realtime=args.realtime, partials=args.partials,
                                       language=args.language, priority=args.priority,
                                       api_key=args.api_key or None):
            if result.final:
                if args.partials and live_line:
                    print("\r\033[K", end="", file=sys.stderr)
                print(result.text, flush=True)
            elif args.partials and live_line:
                print(f"\r\033[K… {result.text}", end="", file=sys.stderr, flush=True)
            elif args.partials:
                print(f"… {result.text}", file=sys.stderr, flush=True)

    async def upload() -> None:
        from voxfleet.file_client import transcribe_upload

        if str(args.file) == "-":
            raise ValueError("--file-api sends a file: give its path, not -")
        pending = ""  # text after the last complete sentence: printed with the next one, a sentence per line
        async for delta in transcribe_upload(args.url, args.file, api_key=args.api_key or None,
                                             language=args.language):
            *sentences, pending = SENTENCE_END.split(pending + delta.text)
            if live_line:
                print("\r\033[K", end="", file=sys.stderr)
            for sentence in sentences:
                print(sentence.strip(), flush=True)
            if live_line and delta.seconds is not None and delta.duration:
                print(f"… {delta.seconds:.0f} of {delta.duration:.0f} s transcribed "
                      f"({100 * delta.seconds / delta.duration:.0f} %)", end="", file=sys.stderr, flush=True)
        if live_line:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        if pending.strip():
            print(pending.strip(), flush=True)

    try:
        asyncio.run(run())
    except TranscriptionError as exc:
        print(f"voxfleet transcribe: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"voxfleet transcribe: {exc}", file=sys.stderr)
        return 2
    return 0


def wait_ready(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll an HTTP readiness endpoint until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout:g} s")


def cmd_demo(args: argparse.Namespace) -> int:
    """`voxfleet up` on loopback, the bundled sample transcribed through its router, then a clean stop."""
    from voxfleet.up import LocalFleet

    fleet = LocalFleet(args.port, args.pods)
    print(f"starting a router on 127.0.0.1:{args.port} and {args.pods} pod(s) (model tiny.en) ...", file=sys.stderr)
    try:
        fleet.start()
        sample = Path(args.file) if args.file else bundled_sample()
        print(f"transcribing {sample.name} through {fleet.url}:", file=sys.stderr)
        code = cmd_transcribe(argparse.Namespace(url=fleet.url, file=sample, realtime=False, partials=False,
                                                 language="en", priority="normal", api_key=""))
        if code == 0 and not args.file:
            print(f"(what was said: {bundled_sample_text()})", file=sys.stderr)
        return code
    except (RuntimeError, TimeoutError) as exc:
        print(f"voxfleet demo: {exc}", file=sys.stderr)
        return 1
    finally:
        fleet.stop()


def cmd_router(args: argparse.Namespace) -> int:
    from stt_router.server import run_router
    from stt_router.settings import ENV_PREFIX, RouterSettings

    router_settings = settings_mod.load(RouterSettings, ENV_PREFIX, args)
    router_settings.validate()
    _logging(router_settings.log_level)
    try:
        asyncio.run(run_router(router_settings))
    except OSError as exc:  # a keys file that cannot be read, a port in use
        print(f"voxfleet router: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from voxfleet.up import run_up

    return run_up(port=args.port, pods=args.pods, max_sessions=args.max_sessions, log_level=args.log_level,
                  example=bundled_sample(), min_pods=args.min_pods, max_pods=args.max_pods, reserve=args.reserve)


def cmd_operator(argv: list[str]) -> int:
    """The operator keeps its own flags; everything after `operator` is passed on."""
    from stt_operator.main import main as operator_main

    return operator_main(argv)


def build_parser() -> argparse.ArgumentParser:
    from stt_pod.settings import ENV_PREFIX, PodSettings
    from stt_router.settings import ENV_PREFIX as ROUTER_ENV_PREFIX
    from stt_router.settings import RouterSettings

    parser = argparse.ArgumentParser(prog="voxfleet", description="Streaming speech-to-text for many live clients.")
    parser.add_argument("--version", action="version", version=f"voxfleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    pod = sub.add_parser("pod", help="run an STT pod (one model, many sessions)")
    settings_mod.add_arguments(pod, PodSettings, ENV_PREFIX)
    pod.set_defaults(func=cmd_pod)

    tr = sub.add_parser("transcribe", help="stream an audio file to a pod or router and print the transcript")
    tr.add_argument("url", help="ws://host:port of a pod or router")
    tr.add_argument("file", help="audio file (anything libsndfile or PyAV reads: WAV, FLAC, MP3, M4A, Opus, ...), "
                                 "or - for raw samples on stdin (see --rate), sent as they arrive")
    tr.add_argument("--realtime", action="store_true", help="send the audio at real-time pace")
    tr.add_argument("--partials", action="store_true", help="show partial results on stderr")
    tr.add_argument("--language", default="en", help="language of the speech (English-only models take only en)")
    tr.add_argument("--priority", default="normal", choices=("high", "normal", "low"),
                    help="scheduling class asked for; a router caps it at what the API key allows")
    tr.add_argument("--rate", type=int, default=16000, help="with -: sample rate of the raw audio on stdin")
    tr.add_argument("--channels", type=int, default=1, help="with -: interleaved channels on stdin")
    tr.add_argument("--encoding", default="pcm16", choices=("pcm16", "float32"),
                    help="with -: little-endian sample encoding on stdin")
    tr.add_argument("--api-key", default=os.environ.get("VOXFLEET_API_KEY", ""),
                    help="API key for a router that asks for one, sent as the X-API-Key header "
                         "(default: $VOXFLEET_API_KEY)")
    tr.add_argument("--file-api", action="store_true",
                    help="upload the file to the file lane (POST /v1/audio/transcriptions: decoded server-side, in "
                         "the capacity live sessions leave free) instead of streaming it as a session; shows progress")
    tr.set_defaults(func=cmd_transcribe)

    sub.add_parser("operator", help="run the Kubernetes operator (`voxfleet operator crd` prints the CRD)")

    demo = sub.add_parser("demo", help="voxfleet up, transcribe the bundled sample through it, stop")
    demo.add_argument("--port", type=int, default=8765, help="the router's port")
    demo.add_argument("--pods", type=int, default=2, help="local pod processes")
    demo.add_argument("--file", help="another audio file to transcribe instead")
    demo.set_defaults(func=cmd_demo)

    router = sub.add_parser("router", help="run a router: place, queue, pin and relay sessions onto pods")
    settings_mod.add_arguments(router, RouterSettings, ROUTER_ENV_PREFIX)
    router.set_defaults(func=cmd_router)

    up = sub.add_parser("up", help="run a router and local pods on loopback until Ctrl-C")
    up.add_argument("--port", type=int, default=8765, help="the router's port (clients connect here)")
    up.add_argument("--pods", type=int, default=2, help="local pod processes (a fixed number)")
    up.add_argument("--min-pods", type=int, default=None,
                    help="autoscale from the pods' load: fewest pods, always warm (default 1 with --max-pods)")
    up.add_argument("--max-pods", type=int, default=None, help="autoscale: most pods (default: --pods)")
    up.add_argument("--max-sessions", type=int, default=None, help="sessions per pod (default: the pod's own)")
    up.add_argument("--reserve", default="", help="reserved capacity, e.g. high=0.2: that share of the slots only "
                    "sessions of the class take (the router's --reserve; the autoscaler keeps it free)")
    up.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    up.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["operator"]:
        return cmd_operator(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `voxfleet transcribe ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 0
    except ValueError as exc:  # bad settings, from a flag or the environment
        print(f"voxfleet: {_naming_the_variable(str(exc), args.command)}", file=sys.stderr)
        return 2


def _naming_the_variable(message: str, command: str) -> str:
    """A message about `--some-flag` also names the environment variable that sets it."""
    from stt_pod.settings import ENV_PREFIX as POD_PREFIX
    from stt_router.settings import ENV_PREFIX as ROUTER_PREFIX

    prefix = {"pod": POD_PREFIX, "router": ROUTER_PREFIX}.get(command)
    flag = re.match(r"--([a-z0-9-]+)", message)
    if prefix is None or flag is None:
        return message
    return f"{message} (set by --{flag[1]} or {prefix}{flag[1].upper().replace('-', '_')})"
