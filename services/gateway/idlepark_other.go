//go:build !linux

package gateway

import "syscall"

// canPark: elsewhere than Linux, idle connections stay with fasthttp.
const canPark = false

func awaitBytes(syscall.RawConn) bool { return false }
