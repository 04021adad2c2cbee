//go:build !windows

package sshx

import (
	"errors"
	"net"
)

// dialAgent reaches ssh-agent on its Unix socket.
func dialAgent(sock string) (net.Conn, error) {
	if sock == "" {
		return nil, errors.New("SSH_AUTH_SOCK is not set")
	}
	return net.Dial("unix", sock)
}
