#!/usr/bin/env bash
# build-goreleaser.sh builds GoReleaser (v2.15.1, the newest that builds
# with Go 1.26 from the module proxy) and caches it, so the release
# configuration can be checked by the tests. A second run finds the cached
# binary and returns at once. Prints the binary's path on stdout.
set -euo pipefail

version="${GORELEASER_VERSION:-v2.15.1}"
cache="${LUCID_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lucid/tools}"
dir="$cache/goreleaser-$version.d"
bin="$dir/goreleaser"

if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi

mkdir -p "$dir"
echo "build-goreleaser: building GoReleaser $version from the module proxy (a few minutes, once)" >&2
GOBIN="$dir" CGO_ENABLED=0 go install -trimpath "github.com/goreleaser/goreleaser/v2@$version" >&2
echo "$bin"
