//go:build windows

package sshx

import (
	"net"
	"time"

	"github.com/Microsoft/go-winio"
)

// windowsAgentPipe is where Windows' OpenSSH agent listens.
const windowsAgentPipe = `\\.\pipe\openssh-ssh-agent`

// dialAgent reaches ssh-agent: SSH_AUTH_SOCK when set (a pipe path), else
// the Windows OpenSSH agent's named pipe.
func dialAgent(sock string) (net.Conn, error) {
	if sock == "" {
		sock = windowsAgentPipe
	}
	timeout := 2 * time.Second
	return winio.DialPipe(sock, &timeout)
}
