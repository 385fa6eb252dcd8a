//go:build !unix

package gateway

import "syscall"

// canWriteNow is false here: every write goes through a writer goroutine that waits.
const canWriteNow = false

func writeNow(syscall.RawConn, []byte) (int, error) { return 0, nil }
