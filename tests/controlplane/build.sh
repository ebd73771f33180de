#!/usr/bin/env bash
# Builds rekon-controlplane (etcd + kube-apiserver + controllers in one process).
#
#   tests/controlplane/build.sh [OUTPUT]
#
# OUTPUT defaults to $REKON_CACHE/bin/rekon-controlplane, REKON_CACHE to $HOME/.cache/rekon.
# The Go toolchain is $GO if set, else `go` on PATH, else /usr/local/go/bin/go.
# Exit status: 0 built; 3 no Go toolchain; 4 the build failed; 2 bad usage.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${REKON_CACHE:-${HOME:?HOME is not set}/.cache/rekon}"

if [[ $# -gt 1 ]]; then
    echo "usage: $0 [OUTPUT]" >&2
    exit 2
fi
out="${1:-$cache/bin/rekon-controlplane}"

go="${GO:-}"
if [[ -z "$go" ]]; then
    if command -v go >/dev/null 2>&1; then
        go="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go=/usr/local/go/bin/go
    fi
fi
if [[ -z "$go" ]] || ! "$go" version >/dev/null 2>&1; then
    echo "rekon-controlplane: cannot build: no Go toolchain found (set GO, put go on PATH, or install Go >= 1.26 in /usr/local/go)" >&2
    exit 3
fi

# The Kubernetes version comes from go.mod, so /version reports what is really built in.
k8s_version="$(sed -nE 's/^[[:space:]]*k8s\.io\/kubernetes (v[0-9]+\.[0-9]+\.[0-9]+)$/\1/p' "$here/go.mod" | head -n1)"
if [[ -z "$k8s_version" ]]; then
    echo "rekon-controlplane: cannot build: no k8s.io/kubernetes version found in $here/go.mod" >&2
    exit 4
fi
major="${k8s_version#v}"
major="${major%%.*}"
minor="${k8s_version#v*.}"
minor="${minor%%.*}"
pkg=k8s.io/component-base/version
ldflags="-X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.gitCommit="

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT

echo "rekon-controlplane: building $out with $("$go" version) (Kubernetes $k8s_version); the first build takes minutes" >&2
# CGO off: no C toolchain needed, and a static binary.
if ! (cd "$here" && CGO_ENABLED=0 "$go" build -ldflags "$ldflags" -o "$tmp" .); then
    echo "rekon-controlplane: the Go build in $here failed (see the compiler output above)" >&2
    exit 4
fi
mv -f "$tmp" "$out"
echo "rekon-controlplane: built $out" >&2
