package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/gateway/internal/wsframe"
)

// batchConn is the network connection under a WebSocket connection. Every write to the
// socket goes through it, under mu: the writer's batches of data frames (Write, or
// tryWrite for a writer worker), and the control frames the WebSocket library writes from
// the read pump (pongs, close frames), so that frames never interleave. Each write starts
// at a frame's start: what a tryWrite could not write (pending, the rest of a frame) goes
// out first, before anything else.
//
// It also keeps the write deadline, instead of setting one on every write as the library
// would (each setting moves a runtime timer, a measurable share of the cost of a small
// write): before a write it renews the deadline to now+timeout only when less than half of
// the timeout is left. A write so has between timeout/2 and timeout to finish.
type batchConn struct {
	net.Conn
	timeout time.Duration

	// mu serialises writes and protects deadline, closeSent and pending.
	mu        sync.Mutex
	deadline  time.Time
	closeSent bool   // a close frame went out: nothing may follow it (RFC 6455 section 5.5.1)
	pending   []byte // what the last tryWrite left unwritten: written before anything else

	// br is the buffered reader the WebSocket library reads through (nil if the library
	// was given another); only the read pump uses it.
	br *bufio.Reader
	// in inspects the client's frames as Read passes their bytes on (see Read); the
	// read pump owns it.
	in wsframe.Inspector
	// fd is the socket's descriptor, for tryWrite's non-blocking writes (sendNow); -1
	// where there is none (TLS, or a platform without them here), and once Close has
	// begun. fdMu protects it: held across each such write, which never waits, and by
	// Close, so that a write never reaches a descriptor that was closed and then reused for
	// another client's socket.
	fdMu sync.Mutex
	fd   int
	// direct tells whether c had a descriptor for tryWrite when it was made; set once.
	direct bool
	// handshook is set by the first write, the WebSocket library's handshake response;
	// deflate, then, tells whether that response negotiated permessage-deflate. Both are
	// read only after the upgrade.
	handshook, deflate bool
}

// deflateAccepted is how the WebSocket library's handshake response accepts
// permessage-deflate; it always adds server_no_context_takeover and
// client_no_context_takeover, which is what lets one compression of a message serve every
// connection.
var deflateAccepted = []byte("\r\nSec-WebSocket-Extensions: permessage-deflate")

// batchBufs holds the write pumps' batch buffers between batches, so an idle connection
// holds none. It is a cache, shared by every connection.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// maxPooledBatch is the largest buffer put back in the pool; a larger one (after an
// unusually big batch) is left to the garbage collector.
const maxPooledBatch = 256 << 10

// Write writes p whole, within the write deadline, after what a tryWrite left unwritten.
// p starts at a frame's start (the library writes each control frame whole, in one Write).
func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return 0, errCloseSent
	}
	if err := c.writePending(); err != nil {
		return 0, err
	}
	if !c.handshook {
		c.handshook = true
		c.deflate = bytes.Contains(p, deflateAccepted) // the handshake response, written whole
	} else if len(p) > 0 && p[0] == wire.CloseFrameByte {
		c.closeSent = true // the library writes each control frame in one Write
	}
	if err := c.renewDeadline(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// Read reads the client's bytes for the WebSocket library (through br), and passes
// them through the frame inspector: the bytes of a frame it refuses are not passed on,
// and the read fails with the *wsframe.Violation instead, once the library has read the
// frames before it. Called by the read pump only.
func (c *batchConn) Read(p []byte) (int, error) {
	if v := c.in.Failed(); v != nil {
		return 0, v
	}
	n, err := c.Conn.Read(p)
	if m, v := c.in.Scan(p[:n]); v != nil {
		return m, v
	}
	return n, err
}

// tryWrite writes as much of p as the socket takes now, without waiting for it. n <
// len(p) with a nil error means the socket's buffer is full: the rest of p is kept
// (pending) and goes out before any other write, so the caller's writer must then call
// flush, which waits. Where something is pending still, tryWrite writes nothing and
// keeps all of p. p must hold whole data frames or pings, never a close frame; the
// connection must have been direct (startWriter gives the others no worker).
func (c *batchConn) tryWrite(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return 0, errCloseSent
	}
	if len(c.pending) > 0 {
		c.pending = append(c.pending, p...)
		return 0, nil
	}
	c.fdMu.Lock()
	n, err := 0, net.ErrClosed
	if c.fd >= 0 {
		n, err = sendNow(c.fd, p)
	}
	c.fdMu.Unlock()
	if err != nil {
		return n, fmt.Errorf("write: %w", err)
	}
	if n < len(p) {
		c.pending = append(c.pending[:0], p[n:]...)
	}
	return n, nil
}

// flush writes what a tryWrite left unwritten, waiting for the socket (within the write
// deadline).
func (c *batchConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writePending()
}

// writePending writes pending whole, waiting for the socket. c.mu must be held.
func (c *batchConn) writePending() error {
	for len(c.pending) > 0 {
		if err := c.renewDeadline(); err != nil {
			return err
		}
		n, err := c.Conn.Write(c.pending)
		c.pending = c.pending[n:]
		if err != nil {
			return err
		}
	}
	c.pending = nil
	return nil
}

// renewDeadline moves the write deadline to now+timeout when less than half of the
// timeout is left. c.mu must be held.
func (c *batchConn) renewDeadline() error {
	if now := time.Now(); c.deadline.Sub(now) < c.timeout/2 {
		c.deadline = now.Add(c.timeout)
		if err := c.Conn.SetWriteDeadline(c.deadline); err != nil {
			return err
		}
	}
	return nil
}

// errCloseSent is a write after the close frame.
var errCloseSent = errors.New("gateway: write after the close frame")

// Close closes the connection. A tryWrite under way ends first, and none starts after.
func (c *batchConn) Close() error {
	c.fdMu.Lock()
	c.fd = -1
	c.fdMu.Unlock()
	return c.Conn.Close()
}

// SetWriteDeadline ignores the deadlines the WebSocket library sets: Write keeps its own.
func (c *batchConn) SetWriteDeadline(time.Time) error { return nil }

// closeWrite shuts the sending side of a TCP connection, so the peer reads our close
// frame and then end of stream, while we can still read its close frame.
func (c *batchConn) closeWrite() {
	if tc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}

// hijackRecorder wraps a ResponseWriter so that the connection the WebSocket library
// hijacks is a batchConn with the given write timeout, which the caller then finds in conn.
type hijackRecorder struct {
	http.ResponseWriter
	timeout time.Duration
	sndbuf  int // SO_SNDBUF to set; 0 leaves the kernel's
	conn    *batchConn
}

// readBufferSize is the read buffer of a connection: clients send few, small frames, and
// an idle connection should hold little. The WebSocket library reads larger frames through
// it in several reads.
const readBufferSize = 512

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok && h.sndbuf > 0 {
		_ = tc.SetWriteBuffer(h.sndbuf)
	}
	h.conn = &batchConn{Conn: nc, timeout: h.timeout, fd: socketFD(nc)}
	h.conn.direct = h.conn.fd >= 0
	if brw.Reader.Buffered() == 0 {
		// Swap the server's 4 KiB read buffer for a small one; the WebSocket library
		// reuses the reader it is given. (With bytes buffered, the library refuses the
		// handshake anyway.)
		h.conn.br = bufio.NewReaderSize(h.conn, readBufferSize)
		brw = bufio.NewReadWriter(h.conn.br, brw.Writer)
	}
	return h.conn, brw, nil
}
