"""The router benchmark's harness, end to end at a small scale (bench/router/run.py, real processes).

The benchmark's numbers are only as good as its harness: every frame must come back as its own ack, every
session must end cleanly, directly and through the router, with the Go harness (the default) and the
Python one. This checks that, not any timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STREAMS = 10


@pytest.mark.parametrize("harness", ["go", "python"])
def test_the_benchmark_harness_echoes_every_frame_and_ends_every_session(tmp_path, harness):
    out = tmp_path / "router.json"
    argv = [sys.executable, "bench/router/run.py", "--streams", str(STREAMS), "--seconds", "2",
            "--warmup-seconds", "0.5", "--rest-seconds", "0.5", "--paths", "direct,router", "--harness", harness,
            "--out", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["servers"]["harness"]["name"] == harness, results["servers"]["harness"]  # no silent fallback
    phases = results["runs"][0]["phases"]
    for path in ("direct", "router"):
        s = phases[path]["summary"]
        assert (s["connected"], s["ended_clean"], s["lost"], s["censored"]) == (STREAMS, STREAMS, 0, 0), (path, s)
        assert s["frames_counted"] > 0 and s["echoes"] == s["frames_counted"], (path, s)
        assert not s["stream_errors"] and not s["connect_errors"], (path, s)
