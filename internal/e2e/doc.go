// Package e2e holds end-to-end tests that run the real lucid binary as
// separate processes (engine, anchoring, block manager) on loopback, kill
// them with SIGKILL at random moments, and check what survives. It has no
// code of its own.
package e2e
