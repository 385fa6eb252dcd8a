//go:build linux

package writer

import (
	"syscall"
	"time"
	"unsafe"
)

// clockThreadCPUTime is Linux's CLOCK_THREAD_CPUTIME_ID.
const clockThreadCPUTime = 3

// workClock is the CPU time the calling thread has used (user and system): the home
// worker times a chunk of writes on it, so that a core shared with other work does not
// make its writes look slower than they are (a chunk during which its goroutine moved to
// another thread reads two threads' clocks, and is left out: see runHome). A raw system
// call (the thread clocks have no vDSO entry): it never waits. ok is false where the
// clock is refused.
func workClock() (d time.Duration, ok bool) {
	var ts syscall.Timespec
	_, _, errno := syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTime, uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		return 0, false
	}
	return time.Duration(ts.Nano()), true
}
