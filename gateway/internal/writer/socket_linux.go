//go:build linux

package writer

import (
	"net"
	"syscall"
	"unsafe"
)

// socketFD returns nc's descriptor for sendNow, or -1 where it has none (TLS).
func socketFD(nc net.Conn) int {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	if err := raw.Control(func(s uintptr) { fd = int(s) }); err != nil {
		return -1
	}
	return fd
}

// sendNow writes as much of p to the socket fd as it takes without blocking (a full
// buffer, EAGAIN, ends it early) and returns how much that was. It is a raw system call:
// the runtime does not hand this goroutine's processor to another thread, since the call
// never waits, and the poller's state is not touched (the writer that waits for the socket
// later goes through the net package). That saves the runtime's bookkeeping around each
// write, and its monitor thread's waking every 20 µs to look at processors in system
// calls, which cost more than a tenth of the CPU of a fan-out to 10,000 sockets. The
// caller must hold fdMu and have checked that fd is still open (Socket.Close).
func sendNow(fd int, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, _, errno := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n),
			syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			return n, nil
		case errno != 0:
			return n, errno
		case m == 0:
			return n, nil
		}
		n += int(m)
	}
	return n, nil
}
