"""The servers under test: each one a real process on loopback that the benchmark starts and stops.

A target is a voxfleet pod (`python -m voxfleet pod ...`) or WhisperLive 0.10.0
(bench/pod/whisperlive_server.sh serve ...). The benchmark knows each one's
PID (for CPU), URL, and, for pods, its HTTP endpoints (/readyz, /metrics,
/status). Every wait here is bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from workload import REPO
from bench.common.processes import ServerProcess, free_port

POD_MODES = {
    "batched": [],  # the pod's default --max-batch 8
    "unbatched": ["--max-batch", "1"],
    "no-context": ["--context-seconds", "0", "--prompt-tokens", "0"],  # A/B: decoding context off
    "no-merge": ["--final-merge-seconds", "0"],  # A/B: each utterance its own final, however loaded the pod
    "cut-finals": ["--final-input-seconds", "20"],  # A/B: finals heard with 20 s of encoder input, not 30
    # batched, while the harness keeps --file-backlog uploads in flight (the file lane must not slow live streams)
    "file-backlog": [],
    # The first round's decoding: cut encoder input and greedy for finals too, no context, no fallback.
    "round1": ["--final-input-seconds", "0", "--final-beam-size", "1", "--context-seconds", "0", "--prompt-tokens", "0",
               "--no-temperature-fallback", "--vad-threshold", "0.5"],
}
WHISPERLIVE_SERVERS = {
    "whisperlive": [],
    "whisperlive-batch": ["--batch"],
}
WHISPERLIVE_SCRIPT = REPO / "bench" / "pod" / "whisperlive_server.sh"
MAX_SESSIONS = 64


@dataclass
class Server(ServerProcess):
    """A target: a voxfleet pod or a WhisperLive server."""

    kind: str = field(kw_only=True)  # "pod" | "whisperlive"
    info: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        return f"{self.http}/metrics" if self.kind == "pod" else None

    def start(self, timeout: float = 180.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.kind == "pod":
            env.setdefault("VOXFLEET_POD_LOG_LEVEL", "warning")
        self.spawn(env)
        try:
            if self.kind == "pod":
                self.wait_http_ok("/readyz", timeout)
                status = self.get_json("/status")
                if status is None:
                    raise RuntimeError("no /status")
                self.info["status"] = status
            else:
                self.wait_port(timeout)
        except Exception:
            tail = self.log_tail()
            self.stop(5)
            raise RuntimeError(f"{self.name} did not become ready:\n{tail}") from None

    def stop(self, timeout: float = 60.0) -> int | None:
        return super().stop(timeout)

    def status(self) -> dict | None:
        if self.kind != "pod":
            return None
        return self.get_json("/status")

    def wait_idle(self, timeout: float) -> bool:
        """Nothing left to do: a pod with no session open and nothing queued (a cut-off session may
        linger for its resume grace); a WhisperLive server using under 0.1 core for a whole second."""
        import meter

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            if self.kind == "pod":
                s = self.status()
                if s and s["active_sessions"] == 0 and s["queue_length"] == 0:
                    return True
                time.sleep(0.5)
            else:
                before = meter.cpu_sample(self.pid)
                time.sleep(1.0)
                if not self.alive():
                    return False
                if meter.cpu_cores(before, meter.cpu_sample(self.pid))["server_cores"] < 0.1:
                    return True
        return False


def pod(name: str, extra: list[str], log_dir: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "voxfleet", "pod", "--host", "127.0.0.1", "--port", str(port),
            "--max-sessions", str(MAX_SESSIONS), *extra]
    return Server(name, argv, port, log_dir / f"{name}.log", kind="pod")


def whisperlive(name: str, extra: list[str], log_dir: Path) -> Server:
    port = free_port()
    argv = ["bash", str(WHISPERLIVE_SCRIPT), "serve", "--port", str(port), "--max-clients", str(MAX_SESSIONS), *extra]
    return Server(name, argv, port, log_dir / f"{name}.log", kind="whisperlive")


def make(name: str, log_dir: Path) -> Server:
    """A target by the name run.py's --modes/--servers use."""
    if name in POD_MODES:
        return pod(name, POD_MODES[name], log_dir)
    if name == "voxfleet":
        return pod(name, POD_MODES["batched"], log_dir)
    if name in WHISPERLIVE_SERVERS:
        return whisperlive(name, WHISPERLIVE_SERVERS[name], log_dir)
    raise ValueError(f"unknown target {name!r}: one of {', '.join([*POD_MODES, 'voxfleet', *WHISPERLIVE_SERVERS])}")


def pod_settings(extra: list[str]) -> dict:
    """The settings a pod started with these flags runs with (flags, then VOXFLEET_POD_* env, then defaults)."""
    import dataclasses

    from stt_pod.engine import resolve_model
    from stt_pod.settings import ENV_PREFIX, PodSettings
    from voxfleet import settings as settings_mod
    from voxfleet.cli import build_parser

    args = build_parser().parse_args(["pod", "--host", "127.0.0.1", "--max-sessions", str(MAX_SESSIONS), *extra])
    settings = dataclasses.asdict(settings_mod.load(PodSettings, ENV_PREFIX, args))
    settings.pop("token_secret", None)
    settings.pop("port", None)
    settings["model_path"] = resolve_model(settings["model"])
    return settings


def setup_whisperlive() -> None:
    """Create WhisperLive's virtual environment now, not while a server is being timed."""
    subprocess.run(["bash", str(WHISPERLIVE_SCRIPT), "setup"], check=True, cwd=REPO)
