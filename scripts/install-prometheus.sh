#!/usr/bin/env bash
# Installs the Prometheus server binary (Debian package `prometheus`) for
# tests/integration/test_autoscale_prometheus.py and tests/e2e/test_autoscale_e2e.py,
# which run it themselves: their own config,
# a temporary --storage.tsdb.path, --web.listen-address on a free loopback port.
#   bash scripts/install-prometheus.sh        # prints the binary's path on stdout
#
# The package's maintainer scripts would start a system service; a policy-rc.d that
# says 101 ("action forbidden") stops that for the duration of the install, and any
# service that started anyway is stopped again. Nothing is left running.
# Needs root (or sudo) and apt; does nothing when `prometheus` is already on PATH.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
  command -v prometheus
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-prometheus.sh: needs root or sudo" >&2; exit 1; }
  sudo="sudo"
fi

policy=/usr/sbin/policy-rc.d
backup=""
if [[ -e $policy ]]; then
  backup=$(mktemp)
  $sudo cp -p "$policy" "$backup"
fi
restore() {
  if [[ -n $backup ]]; then $sudo cp -p "$backup" "$policy"; rm -f "$backup"; else $sudo rm -f "$policy"; fi
}
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
$sudo chmod 755 "$policy"

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends prometheus >&2

# Belt and braces: no system Prometheus may keep running (it would hold port 9090).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  $sudo systemctl stop prometheus >&2 || true
  $sudo systemctl disable prometheus >&2 || true
fi
if [[ -x /etc/init.d/prometheus ]]; then
  $sudo /etc/init.d/prometheus stop >&2 2>&1 || true
fi

command -v prometheus
prometheus --version >&2
