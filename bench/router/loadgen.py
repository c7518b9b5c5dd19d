"""The load generator: N real-time streams, spread over one asyncio process per core.

Each stream is one native session: WebSocket handshake, `start`, wait for
`ready`, then one 100 ms frame of 16 kHz pcm16 (`seq` header + 3200 bytes)
every 100 ms, then `end`. Stream i of N sends frame k at
`t0 + k * period + (i / N) * period`, so the N streams' frames are spread
evenly over each period instead of arriving in one burst. Streams go to
worker processes round robin (stream i to worker i mod W), so every worker
carries the same share of the load.

Per frame the stream records its send time; the echo that carries its
sequence number (the stand-in pod's `ack`, relayed or not) gives the round
trip, `arrival - send`, on the same monotonic clock. Frames sent during the
first `warmup` seconds are sent and echoed but not counted.

The sender is one loop per worker over the streams in due order, not one task
per stream: it sleeps until the next frame is due (sending what is due within
`EARLY_SECONDS` at once, since the event loop's timers have about 1 ms
resolution), and gives the event loop a turn every `YIELD_EVERY` sends so
echoes are timestamped when they arrive, not when the sender is done. It
records how late each frame left: the generator keeping up is part of the
result (stats.generator_verdict).

Processes: run.py starts the workers once (`Generator`) and hands each phase
to all of them: the worker connects its streams, reports, waits for the
common `go` time, sends, ends its sessions and returns raw numbers. Every
wait is bounded.

`GoGenerator` does the same with the Go workers of bench/router/goharness
(cmd/loadgen: the same schedule and numbers at a fraction of the CPU, so the
proxy under test is not starved by its own load), driven over their
stdin/stdout one JSON object a line; run.py uses it unless `--harness python`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing as mp
import os
import random
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import servers  # noqa: E402
import wsframes as wf  # noqa: E402
from bench.common.processes import raise_open_file_limit, yield_on_wakeup  # noqa: E402

EARLY_SECONDS = 0.001
"""A frame due within this much of now is sent now (timer resolution); it is not counted as late."""
YIELD_EVERY = 32
"""Sends in a row before the sender lets the event loop read echoes."""
START = json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm16", "channels": 1, "language": "en",
                    "priority": "normal", "options": {"partials": False}}, separators=(",", ":")).encode()
END = b'{"type":"end"}'


@dataclass
class StreamSpec:
    index: int  # global index among the N streams
    host: str
    port: int
    path: str  # e.g. /?session=n100-s7


@dataclass
class PhaseSpec:
    """What one worker does in one phase (one path at one N)."""

    streams: list[StreamSpec]
    n_total: int
    frames: int  # per stream
    warmup_frames: int  # frames (by seq) not counted
    period: float = 0.1
    audio_bytes: int = 3200
    connect_concurrency: int = 50
    connect_timeout: float = 60.0  # the whole connect step of a worker
    go_timeout: float = 120.0  # waiting for the parent's go after connecting
    tail_seconds: float = 2.0  # after the last frame, wait this long at most for the echoes still due
    close_timeout: float = 10.0


@dataclass
class WorkerResult:
    worker: int
    streams: int = 0
    connected: int = 0
    connect_errors: list[str] = field(default_factory=list)
    frames_scheduled: int = 0
    frames_sent: int = 0
    frames_counted: int = 0  # sent after the warm-up
    echoes_counted: int = 0
    censored: int = 0  # counted frames without an echo by the end: their round trip is a lower bound
    rtts: bytes = b""  # array('d') of round trips (s) of counted frames (censored ones at their lower bound)
    lateness: bytes = b""  # array('d') of how late each counted frame left (s)
    first_send: float | None = None
    last_send: float | None = None
    stream_errors: list[str] = field(default_factory=list)  # errors and unexpected closes while streaming
    ended_clean: int = 0  # got `end` and a close 1000 after our `end`
    connect_seconds: float = 0.0


class Stream(asyncio.Protocol):
    """One session on the wire (client side)."""

    def __init__(self, spec: StreamSpec, phase: PhaseSpec, audio: bytes, sink: "Sink"):
        self.spec = spec
        self.offset = spec.index / phase.n_total * phase.period
        self.key = wf.new_key()
        self.mask = os.urandom(4)
        self.framer = wf.AudioFramer(audio, self.mask)
        self.parser = wf.FrameParser(expect_masked=False)
        self.head = bytearray()
        self.upgraded = False
        self.open = False
        self.sent = array("d", bytes(8 * phase.frames))
        self.echoed = bytearray(phase.frames)
        self.warmup_frames = phase.warmup_frames
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        self.closed = loop.create_future()
        self.got_end = False
        self.close_code: int | None = None
        self.we_closed = False

    # --- asyncio callbacks

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(wf.client_request(self.spec.host, self.spec.port, self.spec.path, self.key))

    def connection_lost(self, exc) -> None:
        self.open = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost before ready ({exc or 'closed'})"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > wf.MAX_HEAD_BYTES:
                    self._fail("handshake: response head too long")
                return
            try:
                wf.check_response(bytes(self.head[:end]), self.key)
            except wf.WsError as exc:
                return self._fail(str(exc))
            self.upgraded = True
            data = bytes(self.head[end + 4:])
            self.transport.write(wf.client_frame(wf.OP_TEXT, START, self.mask))
            if not data:
                return
        try:
            messages = self.parser.feed(data)
        except wf.WsError as exc:
            return self._fail(str(exc))
        for opcode, payload in messages:
            if opcode == wf.OP_TEXT:
                self._on_text(payload, now)
            elif opcode == wf.OP_PING:
                self.transport.write(wf.client_frame(wf.OP_PONG, payload, self.mask))
            elif opcode == wf.OP_CLOSE:
                self.close_code = wf.close_code(payload)
                self.open = False
                if not self.we_closed:
                    self.we_closed = True
                    self.transport.write(wf.client_frame(wf.OP_CLOSE, payload[:2], self.mask))
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(f"closed {self.close_code} before ready"))
                elif not self.got_end:
                    self.sink.stream_errors.append(f"stream {self.spec.index}: closed {self.close_code} while streaming")
                # the server closes TCP after the closing handshake; the close timeout covers one that does not

    def _on_text(self, payload: bytes, now: float) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            self.sink.stream_errors.append(f"stream {self.spec.index}: invalid JSON {payload[:80]!r}")
            return
        kind = msg.get("type")
        if kind == "ack":
            seq = msg.get("seq")
            if isinstance(seq, int) and 0 <= seq < len(self.sent) and not self.echoed[seq]:
                sent = self.sent[seq]
                if sent:
                    self.echoed[seq] = 1
                    if seq >= self.warmup_frames:
                        self.sink.rtts.append(now - sent)
        elif kind == "ready":
            self.open = True
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "end":
            self.got_end = True
        elif kind == "error":
            self.sink.stream_errors.append(f"stream {self.spec.index}: error {msg.get('code')}: {msg.get('message')}")
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(f"refused: {msg.get('code')}: {msg.get('message')}"))
        # queued, token, warning: nothing to measure

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        else:
            self.sink.stream_errors.append(f"stream {self.spec.index}: {why}")
        self.open = False
        self.transport.abort()

    # --- sending

    def send_frame(self, seq: int, now: float) -> None:
        self.sent[seq] = now
        self.transport.write(self.framer.frame(seq))

    def send_end(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wf.client_frame(wf.OP_TEXT, END, self.mask))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


@dataclass
class Sink:
    """Numbers of one worker's phase, appended to by its streams."""

    rtts: array = field(default_factory=lambda: array("d"))
    lateness: array = field(default_factory=lambda: array("d"))
    stream_errors: list[str] = field(default_factory=list)


def make_audio(nbytes: int) -> bytes:
    """Low-level noise as pcm16 (what a stream's bytes are does not matter to a proxy; not silence, to be honest)."""
    rng = random.Random(1234)
    return b"".join(rng.randint(-300, 300).to_bytes(2, "little", signed=True) for _ in range(nbytes // 2))


async def _connect_all(phase: PhaseSpec, audio: bytes, sink: Sink, result: WorkerResult) -> list[Stream]:
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(phase.connect_concurrency)
    streams: list[Stream] = []

    async def one(spec: StreamSpec) -> None:
        async with limit:
            stream = Stream(spec, phase, audio, sink)
            try:
                await loop.create_connection(lambda: stream, spec.host, spec.port)
                await stream.ready
                streams.append(stream)
            except (OSError, ConnectionError) as exc:
                stream.abort()
                if len(result.connect_errors) < 20:
                    result.connect_errors.append(f"stream {spec.index}: {exc}")
                else:
                    result.connect_errors.append("...")

    tasks = [asyncio.ensure_future(one(s)) for s in phase.streams]
    started = time.monotonic()
    done, pending = await asyncio.wait(tasks, timeout=phase.connect_timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        result.connect_errors.append(f"{len(pending)} streams not ready within {phase.connect_timeout:g} s")
    for stream in list(streams):
        if not stream.open:
            streams.remove(stream)
    result.connect_seconds = round(time.monotonic() - started, 3)
    result.connected = len(streams)
    return streams


async def _send_all(streams: list[Stream], phase: PhaseSpec, t0: float, sink: Sink, result: WorkerResult) -> None:
    order = sorted(streams, key=lambda s: s.offset)
    sleep, clock = asyncio.sleep, time.monotonic
    burst = 0
    warmup = phase.warmup_frames
    for k in range(phase.frames):
        base = t0 + k * phase.period
        for stream in order:
            due = base + stream.offset
            now = clock()
            if due - now > EARLY_SECONDS:
                await sleep(due - now)
                now = clock()
                burst = 0
            elif burst >= YIELD_EVERY:
                await sleep(0)
                now = clock()
                burst = 0
            result.frames_scheduled += 1
            if not stream.open:
                continue
            stream.send_frame(k, now)
            burst += 1
            result.frames_sent += 1
            if result.first_send is None:
                result.first_send = now
            result.last_send = now
            if k >= warmup:
                result.frames_counted += 1
                sink.lateness.append(max(0.0, now - due))


async def run_phase(phase: PhaseSpec, worker: int, wait_go) -> WorkerResult:
    """Connect, report (via `wait_go`, which returns t0), send, end; the raw numbers."""
    result = WorkerResult(worker, streams=len(phase.streams))
    sink = Sink()
    audio = make_audio(phase.audio_bytes)
    streams = await _connect_all(phase, audio, sink, result)
    t0 = await wait_go(result)
    if t0 is None:  # the parent gave up on this phase
        for s in streams:
            s.abort()
        return result
    await _send_all(streams, phase, t0, sink, result)
    # the last echoes: wait until every counted frame is back, or the tail time is over
    deadline = time.monotonic() + phase.tail_seconds
    while time.monotonic() < deadline and len(sink.rtts) < result.frames_counted:
        await asyncio.sleep(0.02)
    result.echoes_counted = len(sink.rtts)
    # a counted frame still without its echo took at least until now: it enters the distribution at that
    # lower bound (censored), so a proxy that falls behind cannot look fast by losing its slowest frames
    now = time.monotonic()
    for s in streams:
        for seq in range(phase.warmup_frames, phase.frames):
            if s.sent[seq] and not s.echoed[seq]:
                sink.rtts.append(now - s.sent[seq])
                result.censored += 1
    result.rtts, result.lateness = sink.rtts.tobytes(), sink.lateness.tobytes()
    # end every session and wait for the closing handshakes (bounded)
    for s in streams:
        s.send_end()
    closing = [s.closed for s in streams]
    if closing:
        await asyncio.wait(closing, timeout=phase.close_timeout)
    for s in streams:
        if s.got_end and s.close_code == 1000:
            result.ended_clean += 1
        if not s.closed.done():
            s.abort()
    result.stream_errors = sink.stream_errors[:20] + ([f"... {len(sink.stream_errors) - 20} more"]
                                                      if len(sink.stream_errors) > 20 else [])
    return result


# --- the worker processes ----------------------------------------------------------


def _worker_main(conn: Connection, worker: int, yields: bool) -> None:
    raise_open_file_limit()
    if yields:
        yield_on_wakeup()
    while True:
        if not conn.poll(3600):
            return  # the parent is gone or stuck: do not linger
        command, payload = conn.recv()
        if command == "quit":
            return
        if command != "phase":
            continue
        phase: PhaseSpec = payload

        async def wait_go(result: WorkerResult, phase=phase):
            conn.send(("connected", {"connected": result.connected, "connect_errors": result.connect_errors,
                                     "connect_seconds": result.connect_seconds}))
            loop = asyncio.get_running_loop()
            go = loop.create_future()

            def readable() -> None:
                if not go.done():
                    try:
                        go.set_result(conn.recv())
                    except (EOFError, OSError) as exc:
                        go.set_exception(exc)

            loop.add_reader(conn.fileno(), readable)
            try:
                command, t0 = await asyncio.wait_for(go, phase.go_timeout)
            except (asyncio.TimeoutError, EOFError, OSError):
                return None
            finally:
                loop.remove_reader(conn.fileno())
            return t0 if command == "go" else None

        result = asyncio.run(run_phase(phase, worker, wait_go))
        conn.send(("result", result))


class Generator:
    """W worker processes, started once, reused for every phase; `yields`: each runs `yield_on_wakeup`."""

    def __init__(self, workers: int, yields: bool = True):
        ctx = mp.get_context("spawn")
        self.workers = []
        for w in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, w, yields), name=f"router-bench-gen-{w}",
                               daemon=True)
            proc.start()
            child.close()
            self.workers.append((proc, parent))

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.workers]

    def __len__(self) -> int:
        return len(self.workers)

    def start_phase(self, specs: list[PhaseSpec]) -> None:
        for (_, conn), spec in zip(self.workers, specs):
            conn.send(("phase", spec))

    def wait(self, expect: str, timeout: float) -> list:
        """One `expect` message from every worker; raises TimeoutError naming the late ones."""
        deadline = time.monotonic() + timeout
        out = []
        for w, (proc, conn) in enumerate(self.workers):
            remaining = max(0.0, deadline - time.monotonic())
            if not conn.poll(remaining):
                raise TimeoutError(f"load generator worker {w} sent no '{expect}' within {timeout:g} s "
                                   f"(alive: {proc.is_alive()})")
            command, payload = conn.recv()
            if command != expect:
                raise RuntimeError(f"load generator worker {w} sent {command!r}, expected {expect!r}")
            out.append(payload)
        return out

    def go(self, t0: float) -> None:
        for _, conn in self.workers:
            conn.send(("go", t0))

    def close(self) -> None:
        for proc, conn in self.workers:
            try:
                conn.send(("quit", None))
            except OSError:
                pass
        for proc, _ in self.workers:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


class GoGenerator:
    """W Go worker processes (goharness cmd/loadgen), started once, reused for every phase; `Generator`'s interface.

    Each worker reads one JSON command a line on stdin (`phase`, `go`, `abort`, `quit`) and answers one JSON
    event a line on stdout (`connected`, `result`); round trips and send lags come back as raw float64 files."""

    def __init__(self, workers: int, binary: str, log_dir: str | os.PathLike, yields: bool = True):
        self.tmp = tempfile.mkdtemp(prefix="router-bench-gen-")
        self.workers: list[subprocess.Popen] = []
        self.buffers: list[bytes] = []
        self.files: list[tuple[str, str]] = []
        env = dict(os.environ, GOMAXPROCS=servers.go_maxprocs())
        for w in range(workers):
            with open(os.path.join(log_dir, f"generator-{w}.log"), "ab") as log:
                proc = subprocess.Popen([binary, "--worker", str(w)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=log, env=env, preexec_fn=yield_on_wakeup if yields else None)
            self.workers.append(proc)
            self.buffers.append(b"")
            self.files.append((os.path.join(self.tmp, f"rtts-{w}.f64"), os.path.join(self.tmp, f"lateness-{w}.f64")))

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.workers]

    def __len__(self) -> int:
        return len(self.workers)

    def _send(self, proc: subprocess.Popen, message: dict) -> None:
        proc.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        proc.stdin.flush()

    def start_phase(self, specs: list[PhaseSpec]) -> None:
        for proc, spec, (rtt_file, lateness_file) in zip(self.workers, specs, self.files):
            self._send(proc, {"cmd": "phase", **dataclasses.asdict(spec), "rtt_file": rtt_file,
                              "lateness_file": lateness_file})

    def _line(self, w: int, deadline: float, expect: str) -> dict:
        proc = self.workers[w]
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self.buffers[w]:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise TimeoutError(f"load generator worker {w} sent no '{expect}' in time "
                                       f"(alive: {proc.poll() is None})")
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise EOFError(f"load generator worker {w} exited ({proc.wait(5)}) before '{expect}'")
                self.buffers[w] += chunk
        line, _, self.buffers[w] = self.buffers[w].partition(b"\n")
        return json.loads(line)

    def wait(self, expect: str, timeout: float) -> list:
        """One `expect` message from every worker; raises TimeoutError naming the late ones."""
        deadline = time.monotonic() + timeout
        out = []
        for w in range(len(self.workers)):
            msg = self._line(w, deadline, expect)
            event = msg.pop("event", None)
            if event != expect:
                raise RuntimeError(f"load generator worker {w} sent {event!r}, expected {expect!r}")
            if expect == "result":
                rtt_file, lateness_file = self.files[w]
                with open(rtt_file, "rb") as f:
                    msg["rtts"] = f.read()
                with open(lateness_file, "rb") as f:
                    msg["lateness"] = f.read()
                msg = WorkerResult(**msg)
            out.append(msg)
        return out

    def go(self, t0: float) -> None:
        """Start sending at `t0` on this process's time.monotonic() (the workers get it as wall-clock time)."""
        t0_wall = time.time() + (t0 - time.monotonic())
        for proc in self.workers:
            self._send(proc, {"cmd": "go", "t0_wall": t0_wall, "t0_mono": t0})

    def close(self) -> None:
        for proc in self.workers:
            try:
                self._send(proc, {"cmd": "quit"})
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.workers:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)
