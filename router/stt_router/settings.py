"""Every knob and limit of a router, with its safe default and its reason.

Set by flag (`voxfleet router --max-queue 100`) or environment
(`VOXFLEET_ROUTER_MAX_QUEUE=100`); see voxfleet.settings. A router needs a pod
source (`--pods` or `--discover kubernetes`) and an access rule (`--api-keys`
or an explicit `--anonymous`): `validate()` says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from stt_router.reserve import parse_reserve
from voxfleet.settings import setting

ENV_PREFIX = "VOXFLEET_ROUTER_"
MAX_WORKERS = 64


@dataclass(frozen=True)
class RouterSettings:
    # --- where it listens
    host: str = setting("127.0.0.1", "address to bind (HTTP and WebSocket share it)")
    port: int = setting(8765, "port to bind; 0 picks a free one")
    router_id: str = setting("", "identity of this replica in logs; default: host name")
    workers: int = setting(1, "processes serving the port (SO_REUSEPORT, Linux), one core each; every worker has its own "
                              "sessions, queue, per-key limits and /metrics")

    # --- where the pods are
    pods: str = setting("", "static pod list, comma-separated ws:// URLs; list order is the ordinal")
    discover: str = setting("static", "where pods come from: a static list, the EndpointSlices of their Service "
                                      "(kubernetes), or the Pods themselves (kubernetes-pods)",
                            choices=("static", "kubernetes", "kubernetes-pods"))
    namespace: str = setting("", "Kubernetes namespace to watch; default: the router's own")
    selector: str = setting("app.kubernetes.io/component=stt-pod",
                            "label selector of the pods (kubernetes-pods), or of their Service's EndpointSlices (kubernetes)")
    service_name: str = setting("", "watch the EndpointSlices of this Service (kubernetes.io/service-name); overrides --selector")
    pod_port: int = setting(8765, "port of the pods (Kubernetes discovery; a named port 'ws' wins)")
    status_interval_seconds: float = setting(1.0, "how often each pod's /status is polled")
    status_timeout_seconds: float = setting(2.0, "a /status poll slower than this has failed")
    status_failure_threshold: int = setting(3, "consecutive failed /status polls after which a pod is unreachable "
                                               "(a pod whose session connection dies is unreachable at once)")

    # --- placement and the queue
    placement: str = setting("pack", "pack: lowest-ordinal pod with a free slot (empties high ordinals); spread: least loaded",
                             choices=("pack", "spread"))
    max_queue: int = setting(100, "sessions waiting for a slot; more are refused with close 1013")
    max_queue_wait_seconds: float = setting(30.0, "longest a session waits for a slot before close 1013")
    reserve: str = setting("", "reserved capacity: CLASS=SHARE,... (e.g. high=0.2): that share of the pool's session "
                               "slots (rounded up) only sessions of that priority class may take; classes high, "
                               "normal, low, each share in [0, 1), together below 1; empty: none")

    # --- the file lane (POST /v1/audio/transcriptions)
    max_upload_bytes: int = setting(25 << 20, "largest uploaded file the router takes (OpenAI's limit is 25 MiB); "
                                               "larger gets 413. The router holds each upload until its answer is sent")
    upload_timeout_seconds: float = setting(300.0, "time a client has to send its whole upload; slower gets 408")
    max_file_queue: int = setting(64, "file jobs waiting for a pod's file slot; more get 429")
    max_file_queue_bytes: int = setting(256 << 20, "bytes of uploads waiting for a file slot; more get 429")
    file_queue_timeout_seconds: float = setting(300.0, "longest a file job waits for a file slot before 503")
    file_attempts: int = setting(3, "pods one file job is sent to before it fails (a pod that fails mid-job, "
                                    "or cannot be reached, costs one)")

    # --- access
    api_keys: str = setting("", "file (or Secret mount folder) of hashed API keys: 'name sha256:HEX [max_sessions] [priority]' per line")
    anonymous: bool = setting(False, "accept clients without an API key (local use); keys, if given, still work")
    anonymous_max_sessions: int = setting(0, "concurrent anonymous sessions on this replica; 0 means no limit")
    anonymous_priority: str = setting("normal", "most a client without a key may ask for", choices=("high", "normal", "low"))

    # --- resume tokens
    token_secrets: str = setting("", "HMAC secrets for resume tokens, comma-separated; the first signs, all verify (rotation). "
                                     "Replicas must share them; default: random per process")
    token_ttl_seconds: float = setting(4 * 3600.0 + 60.0, "how long a router resume token is valid")

    # --- relay and failover
    max_frame_bytes: int = setting(1 << 20, "largest WebSocket message from a client; larger closes with 1009")
    max_replay_seconds: float = setting(30.0, "uncommitted audio kept per session for failover (2x a pod's longest "
                                              "decode window); when full the client is held back")
    max_replay_bytes: int = setting(8 << 20, "the same bound in bytes, whatever the audio format (30 s of 16 kHz pcm16 "
                                             "is 0.92 MiB); worst-case replay memory is sessions x this")
    max_failovers: int = setting(3, "most times one session moves to another pod")
    pod_connect_timeout_seconds: float = setting(5.0, "connecting to a pod and getting its 'ready'")
    start_timeout_seconds: float = setting(10.0, "time a new connection has to send its first message")
    ping_interval_seconds: float = setting(20.0, "keepalive: a client or pod connection that received nothing for "
                                                 "this long is pinged (each connection draws its own period, "
                                                 "75-100 % of it)")
    ping_timeout_seconds: float = setting(20.0, "keepalive: a connection whose pong is later than this is closed (1011)")

    # --- lifecycle
    startup_grace_seconds: float = setting(30.0, "after start, /readyz says ready even before any pod is ready "
                                                 "(sessions queue meanwhile)")
    drain_timeout_seconds: float = setting(300.0, "on SIGTERM, how long active sessions may continue before they are told to resume elsewhere")
    log_level: str = setting("info", "logging level", choices=("debug", "info", "warning", "error"))

    def validate(self) -> None:
        """Raise ValueError when the settings cannot make a working router."""
        if self.discover == "static" and not self.pod_urls():
            raise ValueError("no pods: give --pods ws://HOST:PORT,... or --discover kubernetes")
        if not self.api_keys and not self.anonymous:
            raise ValueError("no access rule: give --api-keys FILE, or --anonymous for local use")
        for url in self.pod_urls():
            if not url.startswith(("ws://", "wss://")):
                raise ValueError(f"pod address {url!r} is not a ws:// or wss:// URL")
        if self.max_queue < 0 or self.max_queue_wait_seconds < 0:
            raise ValueError("queue bounds must not be negative")
        if self.max_replay_seconds <= 0 or self.max_replay_bytes <= 0:
            raise ValueError("the replay bounds must be positive")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}")
        if self.ping_interval_seconds <= 0 or self.ping_timeout_seconds <= 0:
            raise ValueError("--ping-interval-seconds and --ping-timeout-seconds must be positive")
        if self.max_upload_bytes < 1 or self.max_file_queue < 0 or self.max_file_queue_bytes < 0:
            raise ValueError("--max-upload-bytes must be positive and the file queue bounds not negative")
        if self.file_queue_timeout_seconds < 0:
            raise ValueError("--file-queue-timeout-seconds must not be negative")
        if self.upload_timeout_seconds <= 0:
            raise ValueError("--upload-timeout-seconds must be positive")
        if self.file_attempts < 1:
            raise ValueError("--file-attempts must be at least 1")
        parse_reserve(self.reserve)  # ValueError names what is wrong
        if self.status_failure_threshold < 1:
            raise ValueError("--status-failure-threshold must be at least 1")

    def pod_urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.pods.split(",") if u.strip()]

    def secrets(self) -> list[str]:
        return [s.strip() for s in self.token_secrets.split(",") if s.strip()]
