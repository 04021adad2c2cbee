//go:build !linux

package main

import "errors"

// eventLoop needs epoll.
func eventLoop([]string) error { return errors.New("eventloop runs on Linux only") }
