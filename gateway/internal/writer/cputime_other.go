//go:build !linux

package writer

import "time"

var clockStart = time.Now()

// workClock is the monotonic wall clock where there is no thread CPU clock here: the
// home worker's writes are then timed with whatever else shares its core.
func workClock() (time.Duration, bool) { return time.Since(clockStart), true }
