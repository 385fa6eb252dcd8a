//go:build unix

package gateway

import (
	"errors"
	"syscall"
)

// canWriteNow is true where writeRaw can write to a socket without waiting.
const canWriteNow = true

// writeRaw writes as much of c.wp to the socket fd as it takes without blocking, adding
// to c.wn and setting c.werr: the descriptor is non-blocking (Go's runtime makes it so),
// and a full buffer (EAGAIN) ends the write early instead of waiting for the poller. It
// is the function tryWrite hands to the raw connection; c.mu is held.
func (c *batchConn) writeRaw(fd uintptr) bool {
	for c.wn < len(c.wp) {
		m, err := syscall.Write(int(fd), c.wp[c.wn:])
		if m > 0 {
			c.wn += m
		}
		switch {
		case err == syscall.EINTR:
			continue
		case errors.Is(err, syscall.EAGAIN):
			return true
		case err != nil:
			c.werr = err
			return true
		case m <= 0:
			return true
		}
	}
	return true
}
