#!/usr/bin/env bash
# test.sh is Lucid's test command (the README's, and what .ci/run calls).
# On a fresh machine with only Go it first installs or builds what the tests
# need: sshd, Redis, wrk and qemu-user-static from apt, and a real Consul
# agent, the Pebble ACME server, GoReleaser and golangci-lint built from the
# Go module proxy (cached, so only the first run pays for them). Then it
# checks formatting, vets, lints (.golangci.yml), cross-compiles lucidctl for
# the operator platforms and runs every test. Extra arguments go to `go test`.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
LUCID_CONSUL_BIN="$(./scripts/build-consul.sh)"
LUCID_PEBBLE_DIR="$(./scripts/build-pebble.sh)"
LUCID_GORELEASER_BIN="$(./scripts/build-goreleaser.sh)"
export LUCID_CONSUL_BIN LUCID_PEBBLE_DIR LUCID_GORELEASER_BIN
golangci_lint="$(./scripts/build-golangci-lint.sh)"

echo "== gofmt" >&2
unformatted="$(gofmt -l cmd pkg services internal templates Dockerfiles)"
if [[ -n "$unformatted" ]]; then
	echo "gofmt: these files need formatting:" >&2
	echo "$unformatted" >&2
	exit 1
fi

echo "== go vet" >&2
go vet ./...

# Its cache (~/.cache/golangci-lint) makes a second run over unchanged
# packages take seconds.
echo "== golangci-lint" >&2
"$golangci_lint" run ./...

echo "== cross-compile lucidctl (darwin, windows) and lucid (linux/arm64)" >&2
GOOS=darwin GOARCH=arm64 go build -o /dev/null ./cmd/lucidctl
GOOS=windows GOARCH=amd64 go build -o /dev/null ./cmd/lucidctl
GOOS=linux GOARCH=arm64 go build -o /dev/null ./cmd/lucid

echo "== go test" >&2
go test -timeout 30m "$@" ./...
