//go:build unix

package gateway

import (
	"errors"
	"fmt"
	"syscall"
)

// canWriteNow is true where writeNow can write to a socket without waiting.
const canWriteNow = true

// writeNow writes as much of p to the socket as it takes without blocking: the descriptor
// is non-blocking (Go's runtime makes it so), and a full buffer (EAGAIN) ends the write
// early instead of waiting for the poller.
func writeNow(rc syscall.RawConn, p []byte) (n int, err error) {
	rerr := rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			m, e := syscall.Write(int(fd), p[n:])
			if m > 0 {
				n += m
			}
			switch {
			case e == syscall.EINTR:
				continue
			case errors.Is(e, syscall.EAGAIN):
				return true
			case e != nil:
				err = fmt.Errorf("write: %w", e)
				return true
			case m <= 0:
				return true
			}
		}
		return true
	})
	if err == nil && rerr != nil {
		err = fmt.Errorf("write: %w", rerr)
	}
	return n, err
}
