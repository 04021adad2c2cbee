//go:build !unix

package datachain

import "errors"

// diskFree is not measured here: the reserve is not kept.
func diskFree(string) (uint64, error) { return 0, errors.ErrUnsupported }
