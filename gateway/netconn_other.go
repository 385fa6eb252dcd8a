//go:build !unix

package gateway

// canWriteNow is false here: every write goes through a writer goroutine that waits.
const canWriteNow = false

func (c *batchConn) writeRaw(uintptr) bool { return true }
