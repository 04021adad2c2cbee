//go:build !linux

package gateway

import "syscall"

// clientClosed cannot watch a socket here; the gateway runs on Linux, and
// elsewhere a departed client's exchange ends at the route's timeout.
func clientClosed(_ syscall.RawConn, quit <-chan struct{}) bool {
	<-quit
	return false
}
