//go:build !linux

package datachain

import "errors"

// diskFree is measured on Linux alone, where the services run (a Pi, the
// images); elsewhere (a laptop's local stack) the reserve is not kept.
func diskFree(string) (uint64, error) { return 0, errors.ErrUnsupported }
