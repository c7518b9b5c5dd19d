"""One stream over the native voxfleet protocol, timed on arrival.

Drives voxfleet.client.transcribe (real-time pace, partials on). Stream time
0 is the moment transcribe() starts (it paces frame k at start + k * 0.1 s
from then), so a final's latency is its arrival minus (start + its `end`).
"""

from __future__ import annotations

import time

from stats import StreamRecord, gaps_inside_speech
from workload import StreamScript

from tests.speech import wer
from voxfleet.client import TranscriptionError, transcribe

REFUSAL_CODES = {"full", "draining"}
REFUSAL_CLOSE_CODES = {1001, 1013}


async def run_stream(url: str, script: StreamScript, record: StreamRecord) -> None:
    """Fill `record` as results arrive; the caller bounds the time (cancels on its cap)."""
    finals: list[str] = []
    start = time.monotonic()
    try:
        async for result in transcribe(url, script.path, realtime=True, partials=True):
            now = time.monotonic() - start
            if result.final:
                finals.append(result.text)
                record.final_ends.append(result.end)
                record.final_latencies.append(now - result.end)
            else:
                record.partial_arrivals.append(now)
    except TranscriptionError as exc:
        refused = exc.code in REFUSAL_CODES or exc.close_code in REFUSAL_CLOSE_CODES
        record.outcome = "refused" if refused and not finals else "error"
        record.detail = str(exc)
    finally:
        record.wall_seconds = time.monotonic() - start
        record.transcript = " ".join(finals).strip()
        record.partial_gaps = gaps_inside_speech(record.partial_arrivals, list(script.speech))
        if record.outcome == "ok" or finals:
            record.wer = wer(script.text, record.transcript)
