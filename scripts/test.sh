#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, run them all.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test || exit 1
.venv/bin/python -m pytest -q -ra "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests; that is a failure here, not a pass" >&2
  exit 1
fi
exit $rc
