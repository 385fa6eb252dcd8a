package main

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// epollReceivers read many connections from a few goroutines, each waiting on its own
// epoll set, so that the load tool spends little CPU per delivery: no goroutine wakes per
// frame, and one read takes every frame the socket holds. After the handshake (done by
// gorilla), a connection's socket is taken over as a raw descriptor and its frames are
// parsed here: a server's frames are unmasked; pings are answered with masked pongs.
// With sse, the connections are event streams, and their events are parsed (sse.go).
type epollReceivers struct {
	cs     *clientSet
	sse    bool
	loops  []*epollLoop
	next   atomic.Uint64
	byFD   []atomic.Pointer[rawConn] // indexed by descriptor
	stop   atomic.Bool
	wg     sync.WaitGroup
	closed sync.Once
}

type epollLoop struct {
	epfd int
	inf  inflater
}

// inflater decompresses the messages a server sent with permessage-deflate (RFC 7692,
// no context takeover) for one loop; its buffers are reused.
type inflater struct {
	in  []byte
	src bytes.Reader
	fr  io.ReadCloser
	out bytes.Buffer
}

// deflateEnd ends a message's deflate data: the tail the sender removed (RFC 7692
// section 7.2.2), then an empty final block so that the reader sees the end.
var deflateEnd = []byte{0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff}

func (f *inflater) inflate(p []byte) ([]byte, error) {
	f.in = append(append(f.in[:0], p...), deflateEnd...)
	f.src.Reset(f.in)
	if f.fr == nil {
		f.fr = flate.NewReader(&f.src)
	} else if err := f.fr.(flate.Resetter).Reset(&f.src, nil); err != nil {
		return nil, err
	}
	f.out.Reset()
	if _, err := f.out.ReadFrom(f.fr); err != nil {
		return nil, err
	}
	return f.out.Bytes(), nil
}

// rawConn is one connection taken over from gorilla. Owned by its loop's goroutine once
// registered.
type rawConn struct {
	fd      int
	id      int
	pending []byte // the start of a frame (or of an event stream's line) not yet read whole
	// Of an event stream: the last id it had (-1 before any), and the event under way.
	last int64
	ev   sseEvent
}

func newEpollReceivers(cs *clientSet, loops int, sse bool) (*epollReceivers, error) {
	r := &epollReceivers{cs: cs, sse: sse, byFD: make([]atomic.Pointer[rawConn], noFileLimit()+1)}
	for range max(loops, 1) {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("epoll_create1: %w", err)
		}
		l := &epollLoop{epfd: epfd}
		r.loops = append(r.loops, l)
		r.wg.Go(func() { r.run(l) })
	}
	return r, nil
}

// add takes over ws's socket: it duplicates the descriptor, closes gorilla's connection
// (which unregisters it from Go's poller) and reads the duplicate from now on.
func (r *epollReceivers) add(id int, ws *websocket.Conn) error {
	fd, err := takeFD(ws.NetConn())
	if err != nil {
		return err
	}
	_ = ws.Close()
	return r.register(&rawConn{fd: fd, id: id})
}

// register has a loop read rc's socket from now on; on an error, it closes the socket.
func (r *epollReceivers) register(rc *rawConn) error {
	fd := rc.fd
	if fd >= len(r.byFD) {
		syscall.Close(fd)
		return fmt.Errorf("descriptor %d over the table", fd)
	}
	r.byFD[fd].Store(rc)
	l := r.loops[r.next.Add(1)%uint64(len(r.loops))]
	r.cs.live.Add(1)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd)}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		r.byFD[fd].Store(nil)
		r.cs.live.Add(-1)
		syscall.Close(fd)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

func (r *epollReceivers) run(l *epollLoop) {
	events := make([]syscall.EpollEvent, 256)
	buf := make([]byte, 256<<10)
	for !r.stop.Load() {
		n, err := syscall.EpollWait(l.epfd, events, 100)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			rc := r.byFD[ev.Fd].Load()
			if rc == nil {
				continue
			}
			var why string
			if r.sse {
				why = r.readSSE(rc, buf)
			} else {
				why = r.read(rc, buf, &l.inf)
			}
			if why != "" {
				r.drop(l, rc, why)
			}
		}
	}
}

// readOnce reads what the non-blocking socket fd holds, once, into buf: the bytes read,
// or none and why the connection ended ("" when there was nothing to read yet).
func readOnce(fd int, buf []byte) ([]byte, string) {
	n, err := syscall.Read(fd, buf)
	if err != nil {
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
			return nil, ""
		}
		return nil, "read: " + err.Error()
	}
	if n == 0 {
		return nil, "EOF"
	}
	return buf[:n], ""
}

// read reads what the socket holds once and handles every whole frame in it. It returns
// why the connection ended, or "" while it goes on.
func (r *epollReceivers) read(rc *rawConn, buf []byte, inf *inflater) string {
	data, why := readOnce(rc.fd, buf)
	if len(data) == 0 {
		return why
	}
	now := time.Now()
	if len(rc.pending) > 0 {
		rc.pending = append(rc.pending, data...)
		data = rc.pending
	}
	for {
		op, payload, size, ok := nextFrame(data)
		if !ok {
			break
		}
		if data[0]&0x40 != 0 { // RSV1: compressed (permessage-deflate)
			var err error
			if payload, err = inf.inflate(payload); err != nil {
				return "inflate: " + err.Error()
			}
		}
		switch op {
		case 0, 1, 2: // continuation, text, binary
			if ts := scanTS(payload); ts > 0 {
				r.cs.rec.record(rc.id, ts, now)
			}
		case 8: // close
			code := 1005
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
			}
			return "close " + strconv.Itoa(code)
		case 9: // ping: answer with a pong carrying its payload, masked with a zero key
			if len(payload) <= 125 {
				pong := append([]byte{0x8A, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
				_, _ = syscall.Write(rc.fd, pong)
			}
		}
		data = data[size:]
	}
	// Keep the start of an incomplete frame for the next read.
	if len(data) == 0 {
		rc.pending = rc.pending[:0]
	} else {
		rc.pending = append(rc.pending[:0:0], data...)
	}
	return ""
}

// nextFrame splits the first whole frame off b: its opcode, payload and size in b.
func nextFrame(b []byte) (op byte, payload []byte, size int, ok bool) {
	if len(b) < 2 {
		return 0, nil, 0, false
	}
	op = b[0] & 0x0f
	h, l := 2, int(b[1]&0x7f)
	switch l {
	case 126:
		if len(b) < 4 {
			return 0, nil, 0, false
		}
		h, l = 4, int(binary.BigEndian.Uint16(b[2:]))
	case 127:
		if len(b) < 10 {
			return 0, nil, 0, false
		}
		h, l = 10, int(binary.BigEndian.Uint64(b[2:]))
	}
	if b[1]&0x80 != 0 {
		h += 4 // masked (a server should not mask): skip the key; the payload stays masked
	}
	if len(b) < h+l {
		return 0, nil, 0, false
	}
	return op, b[h : h+l], h + l, true
}

// takeFD duplicates nc's socket descriptor, non-blocking, for reading with epoll; the
// caller then closes nc (which unregisters it from Go's poller) and owns the duplicate.
func takeFD(nc net.Conn) (int, error) {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return -1, errors.New("not a TCP connection")
	}
	sc, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := sc.Control(func(s uintptr) { fd, dupErr = syscall.Dup(int(s)) }); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, fmt.Errorf("dup: %w", dupErr)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// drop ends a connection whose server closed it (or that failed).
func (r *epollReceivers) drop(l *epollLoop, rc *rawConn, why string) {
	_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, rc.fd, nil)
	r.byFD[rc.fd].Store(nil)
	syscall.Close(rc.fd)
	r.cs.live.Add(-1)
	r.cs.endedWhy(why)
}

// close stops the loops and closes every connection still open.
func (r *epollReceivers) close() {
	r.closed.Do(func() {
		r.stop.Store(true)
		r.wg.Wait()
		for i := range r.byFD {
			if rc := r.byFD[i].Swap(nil); rc != nil {
				syscall.Close(rc.fd)
				r.cs.live.Add(-1)
			}
		}
		for _, l := range r.loops {
			syscall.Close(l.epfd)
		}
	})
}
