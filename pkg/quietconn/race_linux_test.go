//go:build !386

package quietconn

import (
	"io"
	"testing"
)

// handedOver is written before a byte is sent and read after it arrives.
var handedOver int

// TestRaceDetectorSeesHandOverThroughSocket: what is written to a socket
// happens before it is read at the other end, for the race detector too
// (syscalls_race.go); with raw system calls under -race this test fails.
func TestRaceDetectorSeesHandOverThroughSocket(t *testing.T) {
	for name, quiet := range map[string]bool{"quiet": true, "netconn": false} {
		t.Run(name, func(t *testing.T) {
			q, peer := quietPair(t, quiet)
			done := make(chan error, 1)
			go func() {
				_, err := io.ReadFull(q, make([]byte, 1))
				_ = handedOver
				done <- err
			}()
			handedOver++
			if _, err := peer.Write([]byte{1}); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}
