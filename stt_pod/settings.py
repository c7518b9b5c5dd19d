"""Every knob and limit of an STT pod, with its safe default and its reason.

Set by flag (`voxfleet pod --max-sessions 8`) or environment
(`VOXFLEET_POD_MAX_SESSIONS=8`); see voxfleet.settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxfleet.settings import setting

ENV_PREFIX = "VOXFLEET_POD_"
WHISPER_INPUT_SECONDS = 30


@dataclass(frozen=True)
class PodSettings:
    # --- where it listens
    host: str = setting("127.0.0.1", "address to bind (HTTP and WebSocket share it)")
    port: int = setting(8765, "port to bind; 0 picks a free one")
    pod_id: str = setting("", "identity of this pod in tokens and logs; default: host name")

    # --- the model
    model: str = setting("tiny.en", "faster-whisper model: a name, or a path to a converted model")
    device: str = setting("cpu", "where the model runs", choices=("cpu", "cuda", "auto"))
    compute_type: str = setting("int8", "CTranslate2 compute type (int8, int8_float16, float16, float32, ...)")
    cpu_threads: int = setting(0, "threads for the model on CPU; 0 means all cores")
    beam_size: int = setting(1, "beam width of partial decodes; 1 is greedy and cheapest")
    final_beam_size: int = setting(5, "beam width of final decodes (5 is faster-whisper's default)")

    # --- the scheduler
    max_batch: int = setting(8, "most decode jobs in one model call; 1 is the unbatched baseline")
    batch_window_ms: int = setting(25, "how long an idle scheduler waits to gather a batch")
    partial_max_wait_ms: int = setting(1500, "a queued partial older than this is dropped (overload shedding)")
    encode_pad_seconds: float = setting(4.0, "silence appended to each window before encoding; shorter is cheaper but loops more often (30 = Whisper's full context)")
    encode_bucket_seconds: float = setting(2.0, "encoder input lengths are rounded up to this, so batches line up")
    final_input_seconds: float = setting(30.0, "shortest encoder input of a final's decode: 30 is Whisper's whole input (accurate); less is cheaper")
    partial_input_seconds: float = setting(0.0, "shortest encoder input of a partial's decode; 0: the window plus --encode-pad-seconds")
    prompt_tokens: int = setting(64, "most tokens of a session's earlier final text each decode is conditioned on; 0 turns the prompt off")
    temperature_fallback: bool = setting(True, "decode again at rising temperatures a window whose text loops or is unlikely, as Whisper does")

    # --- streaming decoding
    partial_commits: bool = setting(False, "words two partials in a row agree on become finals before the utterance ends (lower latency; partials hear a cut input, so it costs accuracy)")
    partial_interval_ms: int = setting(1000, "new speech between two partial decodes of a session")
    max_window_seconds: float = setting(15.0, "longest speech one decode sees; bounds cost per second")
    final_merge_seconds: float = setting(20.0, "utterances that close while their session's last final decodes are decoded together, up to this span: under load one encoder pass serves several (0: each alone)")
    context_seconds: float = setting(5.0, "earlier audio of the session before each utterance, with its final words as the decoder's prefix; 0 turns it off")
    final_silence_ms: int = setting(500, "silence that ends an utterance and triggers its final")
    vad_threshold: float = setting(0.35, "speech probability that starts speech (whispered and falsetto speech rate 0.4-0.6)")
    speech_pad_ms: int = setting(200, "audio kept around detected speech so word edges are not cut")
    min_speech_ms: int = setting(250, "speech shorter than this is ignored as noise")

    # --- admission and limits
    max_sessions: int = setting(16, "concurrent sessions; more are refused with close 1013")
    max_frame_bytes: int = setting(1 << 20, "largest WebSocket message; larger closes with 1009")
    max_session_seconds: float = setting(4 * 3600.0, "longest audio one session may send")
    max_backlog_seconds: float = setting(60.0, "undecoded audio per session before the pod stops reading (backpressure)")
    max_reorder_frames: int = setting(64, "out-of-order frames held while waiting for a missing one")
    start_timeout_seconds: float = setting(10.0, "time a new connection has to send its first message")
    idle_timeout_seconds: float = setting(60.0, "a session that sends nothing this long is finished and closed")

    # --- the file lane (POST /v1/audio/transcriptions)
    max_file_jobs: int = setting(16, "uploaded files transcribed at once; more get 429 (the router queues them)")
    max_upload_bytes: int = setting(25 << 20, "largest uploaded file (OpenAI's own limit is 25 MB); larger gets 413")
    max_file_seconds: float = setting(3 * 3600.0, "longest audio in one uploaded file; longer gets 413")
    max_file_audio_held_seconds: float = setting(6 * 3600.0, "decoded audio of all files in progress, held in memory at 230 MB an hour; a file that would pass it gets 429 (the router tries another pod or queues it)")
    upload_timeout_seconds: float = setting(300.0, "time a client has to send its whole upload; slower gets 408")
    file_chapter_seconds: float = setting(120.0, "a long file is cut at pauses into parts about this long, decoded side by side (each part window after window, as offline)")
    file_beam_size: int = setting(5, "beam width of file windows (1 is greedy: faster, a little less accurate)")
    file_batch_with_live: int = setting(1, "file windows in one model call while live sessions are open; such a call starts only while every live session is quiet, and never beside live jobs (0: no file window until the last live session ends; with none open, files fill whole batches)")

    # --- lifecycle
    resume_grace_seconds: float = setting(30.0, "how long a dropped session waits for its client to resume")
    drain_timeout_seconds: float = setting(300.0, "on SIGTERM, how long active sessions may continue")
    token_secret: str = setting("", "HMAC secret for resume tokens; default: random per process")
    log_level: str = setting("info", "logging level", choices=("debug", "info", "warning", "error"))

    def validate(self) -> None:
        """Raise ValueError, naming the flag, when the settings cannot make a working pod."""
        positive = ("max_sessions", "max_frame_bytes", "max_session_seconds", "max_backlog_seconds", "max_batch",
                    "max_file_jobs", "file_beam_size", "file_chapter_seconds", "max_upload_bytes", "max_file_seconds",
                    "max_file_audio_held_seconds", "upload_timeout_seconds",
                    "max_window_seconds", "beam_size", "final_beam_size", "partial_interval_ms",
                    "final_silence_ms", "start_timeout_seconds", "idle_timeout_seconds", "encode_bucket_seconds")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        not_negative = ("context_seconds", "prompt_tokens", "speech_pad_ms", "min_speech_ms", "encode_pad_seconds",
                        "batch_window_ms", "partial_max_wait_ms", "resume_grace_seconds", "drain_timeout_seconds",
                        "max_reorder_frames", "cpu_threads", "final_input_seconds", "partial_input_seconds",
                        "final_merge_seconds", "file_batch_with_live")
        for name in not_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, not {getattr(self, name)}")
        for name in ("final_input_seconds", "partial_input_seconds"):
            if getattr(self, name) > WHISPER_INPUT_SECONDS:
                raise ValueError(f"--{name.replace('_', '-')} must be at most Whisper's {WHISPER_INPUT_SECONDS} s, "
                                 f"not {getattr(self, name)}")
        if not 0 < self.vad_threshold < 1:
            raise ValueError(f"--vad-threshold must lie between 0 and 1, not {self.vad_threshold}")
        span = max(self.final_merge_seconds, self.max_window_seconds + 2 * self.speech_pad_ms / 1000)
        if span + self.context_seconds > WHISPER_INPUT_SECONDS:
            # The engine hears at most Whisper's 30 s: a longer window would lose its end.
            raise ValueError(f"--context-seconds ({self.context_seconds:g}) plus the longest window "
                             f"(--final-merge-seconds or --max-window-seconds with its pads, {span:g}) must fit "
                             f"in Whisper's {WHISPER_INPUT_SECONDS} s input")
        window = self.max_window_seconds + self.final_silence_ms / 1000 + 1
        if self.max_backlog_seconds < window:
            # An open utterance is undecoded audio until its silence closes it; a smaller backlog would stop
            # reading from a client whose next decode can only start once more audio arrives.
            raise ValueError(f"--max-backlog-seconds ({self.max_backlog_seconds:g}) must be at least "
                             f"--max-window-seconds + the final silence + 1 s ({window:g})")
