#!/usr/bin/env bash
# Build the Go harness of the router benchmark (cmd/standin, cmd/loadgen) once per version of its sources.
#
#   bench/router/goharness/build.sh    # prints the folder holding `standin` and `loadgen`
#
# The binaries go to ${VOXFLEET_CACHE:-$HOME/.cache/voxfleet}/bench-goharness/<hash>/, where <hash> covers
# the Go sources, go.mod and `go version`; a folder that already has both binaries is reused as it is.
# Standard library only: nothing is downloaded. Progress goes to stderr, the folder to stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: no 'go' on PATH: install Go or run the benchmark with --harness python" >&2
    exit 1
fi
go_version="$(go version)"
hash="$(
    cd "$here"
    { echo "$go_version"; find . -type f \( -name '*.go' -o -name go.mod \) -print | LC_ALL=C sort |
        while read -r f; do echo "$f"; cat "$f"; done; } | sha256sum | cut -c1-16
)"
out="${VOXFLEET_CACHE:-$HOME/.cache/voxfleet}/bench-goharness/$hash"
if [[ -x "$out/standin" && -x "$out/loadgen" ]]; then
    echo "build.sh: up to date: $out" >&2
    echo "$out"
    exit 0
fi
echo "build.sh: building the Go harness ($go_version) into $out" >&2
mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
(
    cd "$here"
    export CGO_ENABLED=0 GOFLAGS= GOTOOLCHAIN=local  # never fetch a toolchain
    go build -trimpath -o "$tmp/standin" ./cmd/standin
    go build -trimpath -o "$tmp/loadgen" ./cmd/loadgen
)
mv -f "$tmp/standin" "$tmp/loadgen" "$out/"
echo "$out"
