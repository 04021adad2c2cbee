// Package release holds the test that checks .goreleaser.yaml with the
// real GoReleaser; it has no code of its own.
package release
