#!/usr/bin/env bash
# build-golangci-lint.sh builds golangci-lint (v2.15.0, the newest v2 the
# module proxy serves here) with the local Go toolchain and caches it, so the
# linter understands the Go version this module is written in: golangci-lint
# refuses code newer than the Go it was built with. A second run finds the
# cached binary and returns at once; a new local Go rebuilds it. Prints the
# binary's path on stdout.
#
# golangci-lint's go.mod has no replace directives, so `go install
# pkg@version` builds it as released, with the versions its go.sum pins (and
# its version string comes from the module's build info).
set -euo pipefail

version="${GOLANGCI_LINT_VERSION:-v2.15.0}"
cache="${LUCID_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lucid/tools}"
bin="$cache/golangci-lint-$version"
gover="$(go env GOVERSION)"

if [[ -x "$bin" ]] && [[ "$(go version "$bin" 2>/dev/null)" == "$bin: $gover" ]]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "build-golangci-lint: building golangci-lint $version with $gover from the module proxy (a few minutes, once)" >&2
GOBIN="$work" CGO_ENABLED=0 go install -trimpath \
	"github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$version" >&2
mv "$work/golangci-lint" "$bin"
echo "$bin"
