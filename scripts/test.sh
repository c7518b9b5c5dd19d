#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, run them all.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test || exit 1
# Lint the product code first (ruff's rules: pyproject.toml): seconds, and a clear failure before the long tiers.
.venv/bin/ruff check voxfleet stt_pod router/stt_router operator/stt_operator || exit 1
# The e2e tier's control plane, built from Go modules once per machine (cached; a warm run takes a
# second), when the run includes that tier: all tests, or a path naming tests/e2e.
if [[ -z "${VOXFLEET_K8S_BIN:-}" ]] && { [[ $# -eq 0 ]] || [[ "$*" == *e2e* ]]; }; then
  VOXFLEET_K8S_BIN="$(bash scripts/k8s/build.sh)" || exit 1   # progress on stderr; ~20 min the first time
  export VOXFLEET_K8S_BIN
fi
.venv/bin/python -m pytest -q -ra "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests; that is a failure here, not a pass" >&2
  exit 1
fi
exit $rc
