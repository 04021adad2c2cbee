//go:build !linux

package gateway

import (
	"errors"
	"syscall"
)

// canPeek: elsewhere than Linux, a socket is not looked at without being
// read; the gateway runs on Linux.
const canPeek = false

func awaitReadable(syscall.RawConn) (bool, error) { return false, errors.ErrUnsupported }
