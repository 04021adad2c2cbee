# Lucid's everyday commands. Every target also works without make: see the
# command it runs.

MODULE  := github.com/pickme/lucid
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -w -X $(MODULE)/pkg/buildinfo.Version=$(VERSION) -X $(MODULE)/pkg/buildinfo.Commit=$(COMMIT)

.PHONY: build run test test-race bench bench-gateway bench-backup vet lint fmt clean consul pebble

## build: lucidctl and lucid into bin/
build:
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o bin/ ./cmd/lucidctl ./cmd/lucid

## run: the whole stack locally, in the foreground (Ctrl-C stops it)
run: build
	bin/lucidctl up

## test: install test tools if missing, then vet and run every test
test:
	./scripts/test.sh

## test-race: the tests under the race detector
test-race:
	./scripts/test.sh -race

## bench: the chain's and data chain's benchmarks (figures in docs/)
bench:
	go test -run '^$$' -bench Accept -benchtime 20000x ./services/anchoring
	go test -run '^$$' -bench VerifyInclusion ./pkg/logtree
	go test -run '^$$' -bench Audit100k -benchtime 2x ./pkg/chain
	LUCID_BENCH_SLOTS=100 go test -run '^$$' -bench SlotAccuracy -benchtime 1x ./services/engine
	go test -run '^$$' -bench 'Ingest|Read' -benchtime 1000x ./pkg/packstore
	go test -run '^$$' -bench SessionProof ./services/datachain
	go test -run '^$$' -bench Snapshot -benchtime 3x ./services/datachain
	go test -run '^$$' -bench Backup -benchtime 2x ./pkg/backup

## bench-gateway: the gateway against direct, nginx, Caddy, bare fasthttp and a bare event-loop proxy with wrk on 127.0.0.1: req/s, p50/p99, CPU and memory per connection (about 8 min)
bench-gateway:
	./scripts/bench-gateway.sh

## bench-backup: full and incremental backup and restore of a 1.1 GiB data chain on a local stack
bench-backup:
	./scripts/bench-backup.sh

vet:
	go vet ./...

## lint: golangci-lint with .golangci.yml (built once, as the test command does)
lint:
	"$$(./scripts/build-golangci-lint.sh)" run ./...

fmt:
	gofmt -w cmd pkg services internal

## consul: build (once) and print the path of the Consul agent tests use
consul:
	./scripts/build-consul.sh

## pebble: build (once) and print the directory of the Pebble ACME server tests use
pebble:
	./scripts/build-pebble.sh

clean:
	rm -rf bin dist
