// Package archtest holds the tests that keep the module's architecture as
// DESIGN.md draws it: who may import whom, and a doc comment on every
// package. It has no code of its own.
package archtest
