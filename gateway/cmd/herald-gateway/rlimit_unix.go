//go:build unix

package main

import "syscall"

// descriptorLimit returns how many descriptors the process may open (RLIMIT_NOFILE, the
// soft limit, which the Go runtime raises to the hard one at start).
func descriptorLimit() (uint64, bool) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, false
	}
	return r.Cur, true
}
