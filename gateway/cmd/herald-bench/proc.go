package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// raiseNoFile raises this process's descriptor limit to its hard limit.
func raiseNoFile() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur == l.Max {
		return nil
	}
	l.Cur = l.Max
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}

// noFileLimit returns this process's descriptor limit.
func noFileLimit() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	return int(l.Cur)
}

// procSample is a process's CPU time and memory at one moment.
type procSample struct {
	at     time.Time
	cpu    time.Duration // user + system, all threads
	rssKiB int64
}

// readProc samples process pid from /proc.
func readProc(pid int) (procSample, error) {
	s := procSample{at: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// The command name (field 2) may hold spaces: fields are counted after its ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return s, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return s, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	s.cpu = time.Duration(utime+stime) * clockTick
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			s.rssKiB, err = strconv.ParseInt(v, 10, 64)
			return s, err
		}
	}
	return s, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// selfCPU returns the CPU time this process has used, user and system.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// childrenCPU returns the CPU time of this process's waited-for children.
func childrenCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineCPU returns the busy and total jiffies of all CPUs, from /proc/stat.
func machineCPU() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := bytes.Cut(b, []byte{'\n'})
	f := strings.Fields(string(line))
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// findListener returns the pid of the process listening on ip:port (or on the port of
// every address), found through the socket's inode in /proc/net/tcp{,6} and the
// descriptors in /proc/<pid>/fd.
func findListener(ip net.IP, port int) (int, error) {
	inodes := map[string]bool{}
	wants := []string{fmt.Sprintf("00000000:%04X", port), fmt.Sprintf("00000000000000000000000000000000:%04X", port)}
	if v4 := ip.To4(); v4 != nil {
		// /proc/net/tcp shows an IPv4 address as one little-endian 32-bit hex number.
		wants = append(wants, fmt.Sprintf("%02X%02X%02X%02X:%04X", v4[3], v4[2], v4[1], v4[0], port),
			fmt.Sprintf("0000000000000000FFFF0000%02X%02X%02X%02X:%04X", v4[3], v4[2], v4[1], v4[0], port))
	}
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(fl) >= 10 && slices.Contains(wants, fl[1]) && fl[3] == "0A" {
				inodes["socket:["+fl[9]+"]"] = true
			}
		}
		f.Close()
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("no process listens on port %d", port)
	}
	self := os.Getpid()
	dirs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, dir := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
		if pid == self {
			continue
		}
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && inodes[link] {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("port %d: listening socket found, but not its process", port)
}

// loopbackTarget checks that target is host:port on 127.0.0.0/8 (localhost is
// 127.0.0.1) and returns its address and port: this tool sends load to this machine only.
func loopbackTarget(target string) (net.IP, int, error) {
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		return nil, 0, fmt.Errorf("target %q: %w", target, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, 0, fmt.Errorf("target %q: bad port", target)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.To4() == nil || ip.To4()[0] != 127 {
		return nil, 0, fmt.Errorf("target %q: only 127.0.0.0/8 addresses are allowed", target)
	}
	return ip, port, nil
}

// waitQuiet waits until the machine's CPUs are less than busyPct busy over a second,
// for at most limit, so that a measurement does not share the cores with other work.
// It reports the last busy figure and whether it got under.
func waitQuiet(ctx context.Context, busyPct float64, limit time.Duration, log func(float64)) (float64, bool) {
	deadline := time.Now().Add(limit)
	for {
		b0, t0 := machineCPU()
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return 0, false
		}
		b1, t1 := machineCPU()
		pct := 100 * float64(b1-b0) / float64(max(t1-t0, 1))
		if pct < busyPct {
			return pct, true
		}
		if time.Now().After(deadline) {
			return pct, false
		}
		log(pct)
	}
}
