#!/usr/bin/env bash
# build-pebble.sh builds Let's Encrypt's Pebble ACME test server (pebble and
# pebble-challtestsrv, v2.10.3) from the Go module proxy and caches them, so
# the gateway's TLS tests obtain and renew certificates from a real ACME
# server. A second run finds the cached binaries and returns at once. Prints
# the directory that holds both on stdout (LUCID_PEBBLE_DIR).
#
# As for Consul, a small wrapper module requires Pebble and builds its two
# commands with Pebble's own pinned requirements (its go.sum), so the build
# is the same on every machine.
set -euo pipefail

version="${PEBBLE_VERSION:-v2.10.3}"
cache="${LUCID_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lucid/tools}"
dir="$cache/pebble-$version"

if [[ -x "$dir/pebble" && -x "$dir/pebble-challtestsrv" ]] && "$dir/pebble" -version >/dev/null 2>&1; then
	echo "$dir"
	exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "build-pebble: building Pebble $version from the module proxy (once)" >&2
src="$(go mod download -json "github.com/letsencrypt/pebble/v2@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [[ -z "$src" || ! -f "$src/go.mod" ]]; then
	echo "build-pebble: could not download github.com/letsencrypt/pebble/v2@$version" >&2
	exit 1
fi

{
	echo "module lucid.local/pebblebuild"
	echo
	sed -n 's/^go \(.*\)$/go \1/p' "$src/go.mod"
	echo
	echo "require github.com/letsencrypt/pebble/v2 $version"
	echo
	# Pebble's own requirements, so its pinned versions are the ones built.
	sed -n '/^require (/,$p' "$src/go.mod" | grep -v '^replace '
} >"$work/go.mod"
cp "$src/go.sum" "$work/go.sum"
cat >"$work/tools.go" <<'GO'
//go:build tools

package pebblebuild

import (
	_ "github.com/letsencrypt/pebble/v2/cmd/pebble"
	_ "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv"
)
GO

mkdir -p "$dir.tmp"
(
	cd "$work"
	for cmd in pebble pebble-challtestsrv; do
		GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$version" \
			-o "$dir.tmp/$cmd" "github.com/letsencrypt/pebble/v2/cmd/$cmd"
	done
)
rm -rf "$dir"
mv "$dir.tmp" "$dir"
echo "$dir"
