#!/usr/bin/env bash
# build-consul.sh builds a real Consul agent (v1.14.11, the last MPL-2.0
# release) from the Go module proxy and caches it, so tests can run discovery
# against the real thing. A second run finds the cached binary and returns at
# once. Prints the binary's path on stdout.
#
# Consul's own go.mod replaces its api, sdk and proto-public modules with
# local directories, which `go install pkg@version` refuses; a small wrapper
# module that requires Consul and copies its requirements (without the
# replace lines) builds it instead.
set -euo pipefail

version="${CONSUL_VERSION:-v1.14.11}"
cache="${LUCID_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lucid/tools}"
bin="$cache/consul-$version"

if [[ -x "$bin" ]] && "$bin" version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "build-consul: building Consul $version from the module proxy (a few minutes, once)" >&2
dir="$(go mod download -json "github.com/hashicorp/consul@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [[ -z "$dir" || ! -f "$dir/go.mod" ]]; then
	echo "build-consul: could not download github.com/hashicorp/consul@$version" >&2
	exit 1
fi

{
	echo "module lucid.local/consulbuild"
	echo
	sed -n 's/^go \(.*\)$/go \1/p' "$dir/go.mod"
	echo
	echo "require github.com/hashicorp/consul $version"
	echo
	# Everything from the first require block on, minus replace directives.
	sed -n '/^require (/,$p' "$dir/go.mod" | grep -v '^replace '
} >"$work/go.mod"
cp "$dir/go.sum" "$work/go.sum"
cat >"$work/tools.go" <<'GO'
//go:build tools

package consulbuild

import _ "github.com/hashicorp/consul"
GO

(
	cd "$work"
	GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" github.com/hashicorp/consul
)
mv "$bin.tmp" "$bin"
echo "$bin"
