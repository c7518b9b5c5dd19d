"""Streaming WER against offline WER on real speech, in one process, without sockets or a clock.

What a decoding change does to accuracy, measured in minutes instead of the
real-time hour a socket benchmark takes: each clip of the dev set is fed to a
`SessionStream` in 100 ms frames, exactly as a pod's session feeds it, and
every decode job it asks for is run on the pod's `WhisperEngine` before the
next frame arrives (an unloaded pod: decodes cost no stream time). With
`--concurrent N`, N clips stream side by side and their jobs share batches, as
on a pod with N sessions, so prompts of different lengths meet in one call.

The same clips decoded offline (`WhisperModel.transcribe`, faster-whisper's
defaults) give the reference WER; both are pooled over all clips. Settings
can be A/B'd in one run: `--variants "default;context_seconds=0;prompt_tokens=0"`.

    python bench/pod/accuracy.py                          # all English dev-set clips, 1 and 8 streams
    python bench/pod/accuracy.py --concurrent 1 --variants "default;context_seconds=0,prompt_tokens=0"
    python bench/pod/accuracy.py --docs --plot docs/img/pod-accuracy.png   # the table in docs/benchmarks.md
    python bench/pod/accuracy.py --variants "default;partial_commits=true@8"   # @N: that variant at N only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

import ctranslate2
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stt_pod.engine import EngineConfig, WhisperEngine  # noqa: E402
from stt_pod.stream import SessionStream, StreamConfig  # noqa: E402
from stt_pod.vad import StreamingVad  # noqa: E402
from bench.common.docsection import markers, replace_section  # noqa: E402
from bench.common.provenance import git_state, machine_info  # noqa: E402
from tests.devset import Clip, clips, offline_model, offline_transcript, pooled_wer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "pod-accuracy"

FRAME_SECONDS = 0.1
SEED = 0
"""Temperature fallback (offline and streaming) samples at random: seeded, two runs of a setting agree."""
SR = 16000


def parse_variant(spec: str) -> tuple[str, dict]:
    """'default' or 'key=value,key=value' over StreamConfig and EngineConfig fields."""
    spec = spec.strip().split("@", 1)[0]
    if spec in ("", "default"):
        return "default", {}
    out = {}
    for item in spec.split(","):
        key, value = item.split("=", 1)
        out[key.strip()] = json.loads(value)
    return spec, out


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    stream_fields = {f.name for f in dataclasses.fields(StreamConfig)}
    engine_fields = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = set(overrides) - stream_fields - engine_fields
    if unknown:
        raise SystemExit(f"unknown settings: {', '.join(sorted(unknown))}")
    return ({k: v for k, v in overrides.items() if k in stream_fields},
            {k: v for k, v in overrides.items() if k in engine_fields})


JOIN_GAP_SECONDS = 0.8


def join_clips(selected: list[Clip], k: int) -> list[Clip]:
    """Every k consecutive clips as one recording (written to a temporary folder), 0.8 s of silence apart."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="voxfleet-joined-"))
    gap = np.zeros(int(JOIN_GAP_SECONDS * SR), dtype=np.float32)
    joined = []
    for i in range(0, len(selected), k):
        group = selected[i : i + k]
        audio = np.concatenate([part for c in group for part in (sf.read(str(c.path), dtype="float32")[0], gap)])
        path = folder / f"joined{i // k:02d}.wav"
        sf.write(str(path), audio, SR, subtype="PCM_16")
        joined.append(dataclasses.replace(group[0], name=path.stem, path=path, text=" ".join(c.text for c in group),
                                          seconds=len(audio) / SR))
    return joined


def stream_group(engine: WhisperEngine, config: StreamConfig, group: list[Clip], max_batch: int,
                 shift: float = 0.0) -> tuple[list[str], float]:
    """Stream the clips of `group` side by side, each after `shift` s of silence.

    Returns their transcripts (finals joined) and the CPU seconds the model's
    calls took (all threads: what the decoding costs, whatever else runs).
    """
    lead = np.zeros(int(shift * SR), dtype=np.float32)
    audio = [np.concatenate([lead, sf.read(str(c.path), dtype="float32")[0]]) for c in group]
    streams = [SessionStream(config, StreamingVad().feed) for _ in group]
    texts: list[list[str]] = [[] for _ in group]
    step = int(FRAME_SECONDS * SR)
    t = 0.0
    pos = 0
    cpu = 0.0
    while not all(s.done for s in streams):
        for i, s in enumerate(streams):
            if pos < len(audio[i]):
                s.feed(audio[i][pos : pos + step], t)
            elif not s.finished:
                s.finish()
        pos += step
        t += FRAME_SECONDS
        pending = [(i, job) for i, s in enumerate(streams) for job in s.jobs()]
        while pending:
            batch, pending = pending[:max_batch], pending[max_batch:]
            before = time.process_time()
            results = engine.decode([job for _, job in batch])
            cpu += time.process_time() - before
            for (i, job), words in zip(batch, results):
                for event in streams[i].on_result(job, words, t):
                    if hasattr(event, "segment_id"):
                        texts[i].append(event.text)
            pending += [(i, job) for i, s in enumerate(streams) for job in s.jobs()]
    return [" ".join(t) for t in texts], cpu


def run_variant(engine_cache: dict, name: str, overrides: dict, selected: list[Clip], concurrent: int,
                max_batch: int, shifts: list[float]) -> dict:
    stream_over, engine_over = split_overrides(overrides)
    engine_config = dataclasses.replace(EngineConfig(), **engine_over)
    if engine_config not in engine_cache:
        engine_cache.clear()
        engine_cache[engine_config] = WhisperEngine(engine_config)
    engine = engine_cache[engine_config]
    config = dataclasses.replace(StreamConfig(), **stream_over)
    ctranslate2.set_random_seed(SEED)  # temperature fallback samples: the same draws for every variant
    started = time.monotonic()
    hyps: list[str] = []  # every clip once per shift, shift by shift
    cpu = 0.0
    fallbacks = engine.fallbacks
    for shift in shifts:
        for k in range(0, len(selected), concurrent):
            texts, seconds = stream_group(engine, config, selected[k : k + concurrent], max_batch, shift)
            hyps += texts
            cpu += seconds
    audio = sum(c.seconds + shift for c in selected for shift in shifts)  # lead-in silence included: it is streamed
    return {"variant": name, "concurrent": concurrent, "hypotheses": hyps,
            "wer": pooled_wer([c.text for c in selected] * len(shifts), hyps), "seconds": time.monotonic() - started,
            "cpu_per_audio_second": cpu / audio, "fallback_decodes": engine.fallbacks - fallbacks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", default="", help="comma-separated clip names (default: every English clip)")
    ap.add_argument("--concurrent", default="1,8", help="streams side by side, a comma-separated list")
    ap.add_argument("--variants", default="default", help="';'-separated settings to compare")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--shifts", default="0",
                    help="seconds of silence before each clip, comma-separated: every clip is streamed once per "
                         "shift, so windows fall in other places and the WER is less one boundary's luck "
                         "(e.g. 0,0.13,0.29)")
    ap.add_argument("--join", type=int, default=1,
                    help="stream every JOIN consecutive clips as one recording, 0.8 s apart (a conversation: "
                         "speech the VAD misses sits between utterances it hears)")
    ap.add_argument("--show", action="store_true", help="print each clip's transcripts")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--docs", action="store_true", help="write the table into docs/benchmarks.md")
    ap.add_argument("--plot", type=Path, help="draw the WER of each variant against offline into this PNG")
    args = ap.parse_args()
    command = shlex.join(["python", "bench/pod/accuracy.py", *sys.argv[1:]])

    selected = clips(*[n for n in args.clips.split(",") if n])
    if args.join > 1:
        selected = join_clips(selected, args.join)
    shifts = [float(x) for x in args.shifts.split(",")]
    refs = [c.text for c in selected]
    words = sum(c.words for c in selected)
    print(f"{len(selected)} clips, {sum(c.seconds for c in selected):.0f} s, {words} words", file=sys.stderr)
    model = offline_model()
    started = time.monotonic()
    ctranslate2.set_random_seed(SEED)
    offline = [offline_transcript(model, c.path) for c in selected]
    del model
    offline_wer = pooled_wer(refs, offline)
    print(f"offline: WER {offline_wer:.4f} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    results = []
    cache: dict = {}
    for spec in args.variants.split(";"):
        name, overrides = parse_variant(spec)
        only = spec.split("@", 1)[1] if "@" in spec else args.concurrent  # "setting=value@8": N=8 only
        for n in [int(x) for x in only.split(",")]:
            r = run_variant(cache, name, overrides, selected, n, args.max_batch, shifts)
            results.append(r)
            print(f"{name:40s} N={n:<3d} WER {r['wer']:.4f} (offline {offline_wer:.4f}, "
                  f"{100 * (r['wer'] - offline_wer):+.1f} points) model CPU {r['cpu_per_audio_second']:.3f} s "
                  f"per audio s, {r['fallback_decodes']} fallback decodes, {r['seconds']:.0f} s", file=sys.stderr)
            if args.show:
                for c, h, o in zip(selected * len(shifts), r["hypotheses"], offline * len(shifts)):
                    print(f"  {c.name}\n    REF {c.text}\n    OFF {o}\n    STR {h}", file=sys.stderr)
    summary = {"clips": [c.name for c in selected], "shifts": shifts, "seconds": sum(c.seconds for c in selected), "words": words,
               "offline_wer": offline_wer, "offline": offline, "results": results, "command": command,
               "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "git": git_state(),
               "machine": machine_info()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    if args.plot:
        plot(summary, args.plot)
    if args.docs:
        write_docs(summary, args.plot)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = summary["results"]
    labels = [f"{r['variant'].replace(',', chr(10))}\nN={r['concurrent']}" for r in results]  # a setting a line
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(results)), 4.6))
    ax.bar(range(len(results)), [100 * r["wer"] for r in results], color="#4c78a8", label="streaming")
    ax.axhline(100 * summary["offline_wer"], color="#e45756", label="offline, same files")
    ax.axhline(100 * summary["offline_wer"] + 1, color="#e45756", ls="--", lw=1, label="target: offline + 1 point")
    ax.set_xticks(range(len(results)), labels, fontsize=7)
    ax.set_ylabel("pooled WER, %")
    ax.set_title(f"Streaming vs offline WER, {len(summary['clips'])} dev-set clips ({summary['words']} words)")
    ax.set_ylim(0, max(100 * r["wer"] for r in results) * 1.25)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def write_docs(summary: dict, plot_path: Path | None) -> None:
    m = summary["machine"]
    start, end = markers(SECTION)
    rows = [f"| {r['variant']} | {r['concurrent']} | {100 * r['wer']:.1f} | {100 * (r['wer'] - summary['offline_wer']):+.1f} "
            f"| {r['cpu_per_audio_second']:.3f} |" for r in summary["results"]]
    lines = [
        start,
        "### Streaming accuracy against offline decoding, recordings of people",
        "",
        f"- Clips: {len(summary['clips'])} English dev-set recordings (tests/data/devset), {summary['seconds']:.0f} s, "
        f"{summary['words']} words; WER pooled over all clips, lower-cased, punctuation removed",
        f"- Offline: `WhisperModel.transcribe(file)`, faster-whisper's defaults (beam 5, temperature fallback, "
        f"previous text), WER {100 * summary['offline_wer']:.1f} %",
        "- Streaming: the pod's `SessionStream` and `WhisperEngine` in one process, 100 ms frames, every job decoded "
        "before the next frame (an unloaded pod: no wall clock, so the WER does not depend on the machine's load; "
        "speed is measured by bench/pod/run.py); N clips side by side share batches; each clip streamed after "
        f"{', '.join(f'{x:g}' for x in summary['shifts'])} s of silence (where windows fall changes words: the "
        "shifts average that luck out)",
        f"- Machine: {m['nproc']} x {m['cpu_model']}; date {summary['date']}; git {summary['git'].get('commit', '?')[:12]}",
        f"- Command: `{summary['command']}`",
        "- Model CPU: CPU seconds (all threads) of the model's calls per second of audio, every partial decoded "
        "(a loaded pod drops late partials, so this is the most a stream costs)",
        "",
        "| variant | N | WER % | vs offline, points | model CPU s per audio s |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]
    if plot_path:
        lines += ["", f"![streaming vs offline WER]({plot_path.resolve().relative_to(DOCS.parent.resolve()).as_posix()})"]
    lines.append(end)
    replace_section(DOCS, start, end, "\n".join(lines), "# Benchmarks\n")


if __name__ == "__main__":
    main()
