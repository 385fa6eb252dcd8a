package wstransport

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"time"

	"github.com/heraldgw/herald/gateway/internal/writer"
	"github.com/heraldgw/herald/gateway/internal/wsframe"
)

// netConn is the network connection the WebSocket library is given: its writes go
// through the connection's writer.Socket (which serialises them with the writer's), and
// its reads pass the frame inspector.
type netConn struct {
	writer.Socket

	// br is the buffered reader the WebSocket library reads through (nil if the library
	// was given another); only the read pump uses it.
	br *bufio.Reader
	// in inspects the client's frames as Read passes their bytes on (see Read); the
	// read pump owns it.
	in wsframe.Inspector
	// handshook is set by the first write, the WebSocket library's handshake response;
	// deflate, then, tells whether that response negotiated permessage-deflate. Both are
	// written by the handler that upgrades, before any other goroutine uses the
	// connection, and only read after.
	handshook, deflate bool
	// pongSeq is the number of the latest ping a pong has answered; the read pump owns
	// it (here, in what would be padding).
	pongSeq uint32
}

// deflateAccepted is how the WebSocket library's handshake response accepts
// permessage-deflate; it always adds server_no_context_takeover and
// client_no_context_takeover, which is what lets one compression of a message serve every
// connection.
var deflateAccepted = []byte("\r\nSec-WebSocket-Extensions: permessage-deflate")

// Write writes p whole through the Socket; the first write, the handshake response, also
// tells whether permessage-deflate was negotiated.
func (c *netConn) Write(p []byte) (int, error) {
	if !c.handshook {
		c.handshook = true
		c.deflate = bytes.Contains(p, deflateAccepted) // the handshake response, written whole
	}
	return c.Socket.Write(p)
}

// Read reads the client's bytes for the WebSocket library (through br), and passes
// them through the frame inspector: the bytes of a frame it refuses are not passed on,
// and the read fails with the *wsframe.Violation instead, once the library has read the
// frames before it. Called by the read pump only.
func (c *netConn) Read(p []byte) (int, error) {
	if v := c.in.Failed(); v != nil {
		return 0, v
	}
	n, err := c.Socket.Conn.Read(p)
	if m, v := c.in.Scan(p[:n]); v != nil {
		return m, v
	}
	return n, err
}

// hijackRecorder wraps a ResponseWriter so that the connection the WebSocket library
// hijacks is the netConn of conn, with the given write timeout.
type hijackRecorder struct {
	http.ResponseWriter
	timeout time.Duration
	sndbuf  int   // SO_SNDBUF to set; 0 leaves the kernel's
	conn    *Conn // its nc is the hijacked connection
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
	c := &h.conn.nc
	c.Socket.Init(nc, h.timeout)
	if brw.Reader.Buffered() == 0 {
		// Swap the server's 4 KiB read buffer for a small one; the WebSocket library
		// reuses the reader it is given. (With bytes buffered, the library refuses the
		// handshake anyway.)
		c.br = bufio.NewReaderSize(c, readBufferSize)
		brw = bufio.NewReadWriter(c.br, brw.Writer)
	}
	return c, brw, nil
}
