package gateway

import (
	"bufio"
	"net"
	"net/http"
	"sync"
)

// batchConn is the network connection under a WebSocket connection. It lets the write
// pump gather every frame of a batch and send them in one write: between hold and
// release, the WebSocket library's writes are appended to a pooled buffer instead of
// going to the socket. Outside a batch, writes go straight through.
type batchConn struct {
	net.Conn

	// mu protects holding and buf, and is held while a batch is written, so that a control
	// frame written by another goroutine lands whole, before or after a batch.
	mu      sync.Mutex
	holding bool
	buf     *[]byte

	// br is the buffered reader the WebSocket library reads through (nil if the library
	// was given another); only the read pump uses it.
	br *bufio.Reader
}

// batchBufs holds batch buffers between batches, so an idle connection holds none.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// maxPooledBatch is the largest buffer put back in the pool; a larger one (after an
// unusually big batch) is left to the garbage collector.
const maxPooledBatch = 256 << 10

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holding {
		*c.buf = append(*c.buf, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// hold starts a batch: writes are buffered until release.
func (c *batchConn) hold() {
	c.mu.Lock()
	c.holding = true
	c.buf = batchBufs.Get().(*[]byte)
	c.mu.Unlock()
}

// buffered returns how many bytes the current batch holds.
func (c *batchConn) buffered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf == nil {
		return 0
	}
	return len(*c.buf)
}

// release ends a batch, writing everything buffered in one write (within the write
// deadline set on the connection), and returns the number of bytes written.
func (c *batchConn) release() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.holding = false
	var n int
	var err error
	if len(*c.buf) > 0 {
		n, err = c.Conn.Write(*c.buf)
	}
	if cap(*c.buf) <= maxPooledBatch {
		*c.buf = (*c.buf)[:0]
		batchBufs.Put(c.buf)
	}
	c.buf = nil
	return n, err
}

// closeWrite shuts the sending side of a TCP connection, so the peer reads our close
// frame and then end of stream, while we can still read its close frame.
func (c *batchConn) closeWrite() {
	if tc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}

// hijackRecorder wraps a ResponseWriter so that the connection the WebSocket library
// hijacks is a batchConn, which the caller then finds in conn.
type hijackRecorder struct {
	http.ResponseWriter
	conn *batchConn
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
	h.conn = &batchConn{Conn: nc}
	if brw.Reader.Buffered() == 0 {
		// Swap the server's 4 KiB read buffer for a small one; the WebSocket library
		// reuses the reader it is given. (With bytes buffered, the library refuses the
		// handshake anyway.)
		h.conn.br = bufio.NewReaderSize(h.conn, readBufferSize)
		brw = bufio.NewReadWriter(h.conn.br, brw.Writer)
	}
	return h.conn, brw, nil
}
