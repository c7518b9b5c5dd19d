#!/usr/bin/env bash
# Installs the real WhisperLive client (PyPI `whisper-live` 0.10.0) into a Python, for
# tests/integration/test_whisperlive.py, which drives it unchanged against a pod.
#   bash scripts/install-whisperlive-client.sh                # into .venv/bin/python
#   bash scripts/install-whisperlive-client.sh python3        # into another Python
#
# whisper-live's declared dependencies are its server's (torch, openvino, openai-whisper,
# CUDA libraries, ...): gigabytes the client never imports. So the package goes in with
# --no-deps, plus only what `whisper_live.client` imports at import time:
#   websocket-client (module `websocket`), av, scipy (via whisper_live.utils), numpy.
# PyAudio is left out on purpose: it builds against PortAudio and opens audio devices;
# the tests put a stub `pyaudio` module (tests/whisperlive_stubs/) on sys.path instead.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${1:-.venv/bin/python}
if ! "$python" -c 'import sys' 2>/dev/null; then
  echo "no usable Python at '$python' (run scripts/install.sh first, or name one)" >&2
  exit 1
fi

"$python" -m pip install -q "websocket-client>=1.6,<2" "av>=11" "scipy>=1.10" "numpy>=1.26.4,<2.5"
# Last, and without its dependencies (pip would otherwise try to resolve the server's).
"$python" -m pip install -q --no-deps "whisper-live==0.10.0"
"$python" - <<'EOF'
import sys
sys.path.insert(0, "tests/whisperlive_stubs")
import whisper_live.client  # noqa: F401  (fails here, not in the tests, if an import is missing)
from whisper_live.__version__ import __version__
print(f"whisper-live {__version__} client importable", file=sys.stderr)
EOF
