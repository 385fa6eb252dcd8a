//go:build !linux

package writer

import "net"

// socketFD gives no descriptor here: every write goes through a writer goroutine that
// waits.
func socketFD(net.Conn) int { return -1 }

func sendNow(int, []byte) (int, error) { return 0, nil }
