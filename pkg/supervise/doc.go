// Package supervise runs a set of programs as child processes and keeps them
// up: the local stack behind `lucidctl up`.
//
// Programs start in dependency order, each only after its dependencies are
// ready (an HTTP readiness probe, typically). A program that dies is
// restarted with capped exponential backoff that resets after a stable run,
// and is marked failed after too many deaths in a window. Each program runs
// in its own process group, which is stopped as a whole (SIGTERM, a deadline,
// then SIGKILL) so that nothing it spawned outlives it; on Linux the children
// are also killed if the supervisor itself dies.
//
// The package never prints: program output goes to a LogSink and state
// changes to a callback, both supplied by the caller.
package supervise
