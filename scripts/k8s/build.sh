#!/usr/bin/env bash
# Builds, once per machine, the binaries of the local Kubernetes control plane that
# tests/e2e runs on: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
# and kwok,
# each from its Go module (no Docker, no prebuilt downloads: only the Go module proxy);
# and helm (for charts/voxfleet), into the same bin folder.
#
#   bash scripts/k8s/build.sh            # build what is missing, print the bin folder last
#   bash scripts/k8s/build.sh --print    # only print the bin folder (exit 1 if incomplete;
#                                        # checks the control plane only, not helm)
#   bash scripts/k8s/build.sh --prune    # build, then drop the Go caches (keeps 435 MB of binaries;
#                                        # a later version bump then builds from scratch again)
#
# Cache (override with VOXFLEET_K8S_CACHE):
#   ~/.cache/voxfleet/k8s/<k8s version>/bin/   the binaries, each with a .<name>.version stamp
#   ~/.cache/voxfleet/k8s/go/{mod,build}/      Go module and build caches, kept for rebuilds
#   ~/.cache/voxfleet/k8s/src/                 the small go.mod wrappers that select the versions
# It is idempotent: a binary whose stamp matches its version is never rebuilt, so a
# warm machine returns in a second. Builds run under `nice -n 19` with
# VOXFLEET_K8S_BUILD_JOBS (default 2) packages at a time, so a shared 2-core machine
# stays usable. Measured on the 2-core dev machine (shared with other builds), empty
# caches: 13-16 min (kube-apiserver alone 8-9 min), 6.3 GB of cache afterwards (Go
# build cache 4.6 GB, modules 1.4 GB, binaries 435 MB); warm: under a second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${VOXFLEET_K8S_CACHE:-$HOME/.cache/voxfleet/k8s}
bin=$cache/$K8S_VERSION/bin
prune=0
[[ "${1:-}" == "--prune" ]] && prune=1
if [[ "${1:-}" == "--print" ]]; then
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do [[ -x $bin/$b ]] || exit 1; done
  echo "$bin"; exit 0
fi

command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && export PATH=$PATH:/usr/local/go/bin; }
command -v go >/dev/null || { echo "k8s/build: the go command is needed (Go >= 1.26)" >&2; exit 1; }
command -v flock >/dev/null || { echo "k8s/build: flock (util-linux) is needed" >&2; exit 1; }
mkdir -p "$bin" "$cache/src" "$cache/go/mod" "$cache/go/build"
export GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build
export GOFLAGS="-p=${VOXFLEET_K8S_BUILD_JOBS:-2} -trimpath -modcacherw -buildvcs=false -mod=mod"
export CGO_ENABLED=0 GOTOOLCHAIN=local
gonice() { nice -n 19 go "$@"; }

# One build at a time per cache (CI and a developer may share a machine).
exec 9>"$cache/.build.lock"
flock 9

log() { printf '[k8s/build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
t_all=$(date +%s)
log "go $(go env GOVERSION), cache $cache, GOFLAGS=$GOFLAGS"

fresh() {  # fresh NAME VERSION: binary present and built for VERSION
  [[ -x $bin/$1 && -f $bin/.$1.version && "$(cat "$bin/.$1.version")" == "$2" ]]
}

# wrapper DIR MODULE_PATH GO_VERSION REQUIRE_LINE [REPLACE_LINES] -- PACKAGES...
# Writes a tiny main module that requires the component and imports its commands.
wrapper() {
  local dir=$1 module=$2 gover=$3 require=$4 replaces=$5; shift 6
  mkdir -p "$dir"
  {
    echo "module $module"; echo; echo "go $gover"; echo; echo "require $require"
    [[ -n $replaces ]] && printf '\nreplace (\n%s)\n' "$replaces"
  } >"$dir/go.mod"
  {
    echo "//go:build tools"; echo; echo "// Package tools pins the commands that scripts/k8s/build.sh builds."
    echo "package tools"; echo; echo "import ("
    for p in "$@"; do echo "	_ \"$p\""; done
    echo ")"
  } >"$dir/tools.go"
  rm -f "$dir/go.sum"
}

build_one() {  # build_one DIR NAME PACKAGE VERSION [LDFLAGS]
  local dir=$1 name=$2 pkg=$3 version=$4 ldflags=${5:-}
  local t0; t0=$(date +%s)
  log "building $name $version ($pkg) ..."
  (cd "$dir" && gonice build -o "$bin/$name.tmp" -ldflags "-s -w $ldflags" "$pkg")
  mv -f "$bin/$name.tmp" "$bin/$name"
  echo "$version" >"$bin/.$name.version"
  log "built $name in $(( $(date +%s) - t0 )) s ($(du -h "$bin/$name" | cut -f1))"
}

tidy() {  # tidy DIR: resolve the module graph (downloads modules once)
  local t0; t0=$(date +%s)
  log "resolving modules in $1 ..."
  (cd "$1" && gonice mod tidy)
  log "modules resolved in $(( $(date +%s) - t0 )) s"
}

# --- etcd
if ! fresh etcd "$ETCD_VERSION"; then
  dir=$cache/src/etcd-$ETCD_VERSION
  if [[ ! -f $dir/go.sum ]]; then
    wrapper "$dir" voxfleet.local/k8s/etcd 1.26 "go.etcd.io/etcd/server/v3 $ETCD_VERSION" "" -- go.etcd.io/etcd/server/v3
    tidy "$dir"
  fi
  build_one "$dir" etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
fi

# --- kube-apiserver, kube-controller-manager, kubectl
k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
need_k8s=0
for c in "${k8s_cmds[@]}"; do fresh "$c" "$K8S_VERSION" || need_k8s=1; done
if ((need_k8s)); then
  dir=$cache/src/kubernetes-$K8S_VERSION
  staging_version=v0.${K8S_VERSION#v1.}
  if [[ ! -f $dir/go.sum ]]; then
    # k8s.io/kubernetes points every k8s.io staging module at ./staging/...; as a
    # dependency each needs a replace to its published v0.N.M (kubernetes/kubernetes#79384).
    kmod=$(gonice mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    gover=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kmod")
    replaces=""
    for m in $(sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/.*#\1#p' "$kmod"); do
      if gonice list -m "$m@$staging_version" >/dev/null 2>&1; then
        replaces+="	$m => $m $staging_version"$'\n'
      else
        log "  $m $staging_version is not published; not needed for these commands, skipped"
      fi
    done
    wrapper "$dir" voxfleet.local/k8s/kubernetes "$gover" "k8s.io/kubernetes $K8S_VERSION" "$replaces" -- \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
    tidy "$dir"
  fi
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for c in "${k8s_cmds[@]}"; do
    fresh "$c" "$K8S_VERSION" || build_one "$dir" "$c" "k8s.io/kubernetes/cmd/$c" "$K8S_VERSION" "$ld"
  done
fi

# --- kwok
if ! fresh kwok "$KWOK_VERSION"; then
  dir=$cache/src/kwok-$KWOK_VERSION
  if [[ ! -f $dir/go.sum ]]; then
    wrapper "$dir" voxfleet.local/k8s/kwok 1.26 "sigs.k8s.io/kwok $KWOK_VERSION" "" -- sigs.k8s.io/kwok/cmd/kwok
    tidy "$dir"
  fi
  build_one "$dir" kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
fi

# --- helm (charts/voxfleet; helm.sh/helm/v3 has no replace directives, so a plain wrapper).
# Measured on the 2-core dev machine, Go caches warm from the control plane: 85 s (59 MB).
if ! fresh helm "$HELM_VERSION"; then
  dir=$cache/src/helm-$HELM_VERSION
  if [[ ! -f $dir/go.sum ]]; then
    wrapper "$dir" voxfleet.local/k8s/helm 1.26 "helm.sh/helm/v3 $HELM_VERSION" "" -- helm.sh/helm/v3/cmd/helm
    tidy "$dir"
  fi
  build_one "$dir" helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
fi

if ((prune)); then
  log "pruning the Go build and module caches"
  rm -rf "$cache/go"
fi
log "done in $(( $(date +%s) - t_all )) s; binaries $(du -sh "$bin" | cut -f1), whole cache $(du -sh "$cache" | cut -f1)"
echo "$bin"
