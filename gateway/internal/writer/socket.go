package writer

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/heraldgw/herald/gateway/internal/wire"
)

// Socket is the network connection under a connection, on its writing side: every write
// to the socket goes through it, under mu: the writer's batches of data frames (Write,
// or TryWrite for a writer worker), and the control frames the WebSocket library writes
// from the read pump (pongs, close frames), so that frames never interleave. Each write
// starts at a frame's start: what a TryWrite could not write (pending, the rest of a
// frame) goes out first, before anything else.
//
// It also keeps the write deadline, instead of setting one on every write as the library
// would (each setting moves a runtime timer, a measurable share of the cost of a small
// write): before a write it renews the deadline to now+timeout only when less than half of
// the timeout is left. A write so has between timeout/2 and timeout to finish.
//
// A transport holds its Socket by value and readies it with Init; the net.Conn methods
// it does not define (Read, addresses) are the connection's own.
type Socket struct {
	net.Conn
	timeout time.Duration

	// mu serialises writes and protects deadline, pending and closeSent.
	mu       sync.Mutex
	deadline time.Time
	pending  []byte // what the last TryWrite left unwritten: written before anything else

	// fd is the socket's descriptor, for TryWrite's non-blocking writes (sendNow); -1
	// where there is none (TLS, or a platform without them here), and once Close has
	// begun. fdMu protects it: held across each such write, which never waits, and by
	// Close, so that a write never reaches a descriptor that was closed and then reused for
	// another client's socket.
	fdMu sync.Mutex
	fd   int

	closeSent bool // a close frame went out: nothing may follow it (RFC 6455 section 5.5.1)
	// direct tells whether the socket had a descriptor for TryWrite when it was made; set
	// once.
	direct bool
}

// Init readies s to write to nc, each write within timeout.
func (s *Socket) Init(nc net.Conn, timeout time.Duration) {
	s.Conn, s.timeout = nc, timeout
	s.fd = socketFD(nc)
	s.direct = s.fd >= 0
}

// Direct reports whether the socket takes non-blocking writes (TryWrite): a writer
// worker writes it, not a goroutine of its own.
func (s *Socket) Direct() bool { return s.direct }

// batchBufs holds the writers' batch buffers between batches, so an idle connection
// holds none. It is a cache, shared by every connection.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// maxPooledBatch is the largest buffer put back in the pool; a larger one (after an
// unusually big batch) is left to the garbage collector.
const maxPooledBatch = 256 << 10

// Write writes p whole, within the write deadline, after what a TryWrite left unwritten.
// p starts at a frame's start (the library writes each control frame whole, in one
// Write); a close frame is the last thing written.
func (s *Socket) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closeSent {
		return 0, ErrCloseSent
	}
	if err := s.writePending(); err != nil {
		return 0, err
	}
	if len(p) > 0 && p[0] == wire.CloseFrameByte {
		s.closeSent = true // the library writes each control frame in one Write
	}
	if err := s.renewDeadline(); err != nil {
		return 0, err
	}
	return s.Conn.Write(p)
}

// TryWrite writes as much of p as the socket takes now, without waiting for it. n <
// len(p) with a nil error means the socket's buffer is full: the rest of p is kept
// (pending) and goes out before any other write, so the caller's writer must then call
// Flush, which waits. Where something is pending still, TryWrite writes nothing and
// keeps all of p. p must hold whole data frames or pings, never a close frame; the
// socket must be Direct (startWriter gives the others no worker).
func (s *Socket) TryWrite(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closeSent {
		return 0, ErrCloseSent
	}
	if len(s.pending) > 0 {
		s.pending = append(s.pending, p...)
		return 0, nil
	}
	s.fdMu.Lock()
	n, err := 0, net.ErrClosed
	if s.fd >= 0 {
		n, err = sendNow(s.fd, p)
	}
	s.fdMu.Unlock()
	if err != nil {
		return n, fmt.Errorf("write: %w", err)
	}
	if n < len(p) {
		s.pending = append(s.pending[:0], p[n:]...)
	}
	return n, nil
}

// Flush writes what a TryWrite left unwritten, waiting for the socket (within the write
// deadline).
func (s *Socket) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writePending()
}

// writePending writes pending whole, waiting for the socket. s.mu must be held.
func (s *Socket) writePending() error {
	for len(s.pending) > 0 {
		if err := s.renewDeadline(); err != nil {
			return err
		}
		n, err := s.Conn.Write(s.pending)
		s.pending = s.pending[n:]
		if err != nil {
			return err
		}
	}
	s.pending = nil
	return nil
}

// renewDeadline moves the write deadline to now+timeout when less than half of the
// timeout is left. s.mu must be held.
func (s *Socket) renewDeadline() error {
	if now := time.Now(); s.deadline.Sub(now) < s.timeout/2 {
		s.deadline = now.Add(s.timeout)
		if err := s.Conn.SetWriteDeadline(s.deadline); err != nil {
			return err
		}
	}
	return nil
}

// ErrCloseSent is a write after the close frame.
var ErrCloseSent = errors.New("gateway: write after the close frame")

// Close closes the connection. A TryWrite under way ends first, and none starts after.
func (s *Socket) Close() error {
	s.fdMu.Lock()
	s.fd = -1
	s.fdMu.Unlock()
	return s.Conn.Close()
}

// SetWriteDeadline ignores the deadlines the WebSocket library sets: Write keeps its own.
func (s *Socket) SetWriteDeadline(time.Time) error { return nil }

// CloseWrite shuts the sending side of a TCP connection, so the peer reads our close
// frame and then end of stream, while we can still read its close frame.
func (s *Socket) CloseWrite() {
	if tc, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}
