// Package ssetransport is the gateway's Server-Sent Events transport (GET /sse): it takes
// the HTTP connection over from net/http (a hijack), writes the event stream's header,
// and hands the session the connection's writer.Socket and the events encoding
// (wire.Encoding with Events set: each frame's event bytes made once per message for
// every SSE recipient). It has no read pump: the client sends nothing on a stream, and a
// goroutine parked in a read only learns that the client went. Heartbeats are the
// writer's pings, written as comments; the end of a stream is an error event that says
// why and what to do, then the end of the response. Frames to the client do not pass
// through it: the session's writer.Queue writes them, as for WebSocket.
package ssetransport

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/gateway/internal/writer"
)

// closeGrace is how long a stream that ended waits for the client to close its side
// before the gateway drops the connection.
const closeGrace = time.Second

// Config is what the SSE connections of a server share.
type Config struct {
	// PingInterval is how often a heartbeat comment is sent.
	PingInterval time.Duration
	// Retry is the reconnection delay the stream suggests to EventSource (its retry:
	// field); 0 sends none.
	Retry time.Duration
	// WriteTimeout bounds each write to a socket.
	WriteTimeout time.Duration
	// SocketSendBuffer, when positive, is each socket's SO_SNDBUF.
	SocketSendBuffer int
}

// Session is the client's session a Conn serves.
type Session interface {
	// ReadEnded is told that the client went (or the stream ended): the session lets go
	// of what it holds for a live client. End follows.
	ReadEnded()
	// End ends the session.
	End()
	// Recovered is told of a panic recovered in the connection's goroutine.
	Recovered(v any)
	// Log is the connection's logger.
	Log() *slog.Logger
}

// Conn is one client's event stream, on the transport's side.
type Conn struct {
	sock writer.Socket
	cfg  *Config
	s    Session
	q    *writer.Queue
	ping *time.Timer
}

// ErrNoHijack is a response that cannot be taken over (HTTP/2): the stream needs
// HTTP/1.1.
var ErrNoHijack = errors.New("ssetransport: the response cannot be taken over: Server-Sent Events need HTTP/1.1")

// Open takes the connection of w over and writes the stream's header: status 200, the
// event-stream content type, header (CORS, for one), and a retry: hint. On an error
// nothing has been written and the caller answers the request.
func Open(cfg *Config, w http.ResponseWriter, header http.Header) (*Conn, error) {
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoHijack, err)
	}
	_ = brw                         // nothing buffered is read: a client sends nothing after its request
	_ = nc.SetDeadline(time.Time{}) // the server's read timeout was for the request
	if tc, ok := nc.(*net.TCPConn); ok && cfg.SocketSendBuffer > 0 {
		_ = tc.SetWriteBuffer(cfg.SocketSendBuffer)
	}
	c := &Conn{cfg: cfg}
	c.sock.Init(nc, cfg.WriteTimeout)
	var b strings.Builder
	b.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n" +
		"Cache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n")
	_ = header.Write(&b) // a strings.Builder does not fail
	b.WriteString("\r\n")
	if cfg.Retry > 0 {
		b.WriteString("retry: " + strconv.FormatInt(cfg.Retry.Milliseconds(), 10) + "\n\n")
	}
	if _, err := c.sock.Write([]byte(b.String())); err != nil {
		_ = c.sock.Close()
		return nil, fmt.Errorf("ssetransport: write header: %w", err)
	}
	return c, nil
}

// Encoding is how frames go to an event stream: each as an event, made once for all.
func (c *Conn) Encoding() wire.Encoding { return wire.Encoding{Events: true} }

// Socket is the connection's socket, for the session's write queue.
func (c *Conn) Socket() *writer.Socket { return &c.sock }

// Init binds c to its session s, whose queue q writes to c's Socket, and starts the
// heartbeats.
func (c *Conn) Init(s Session, q *writer.Queue) {
	c.s, c.q = s, q
	c.ping = time.AfterFunc(c.cfg.PingInterval, c.pingTick)
}

func (c *Conn) pingTick() {
	select {
	case <-c.q.Done():
		return
	default:
	}
	c.q.Ping()
	c.ping.Reset(c.cfg.PingInterval)
}

// Start starts the goroutine that waits for the client to go.
func (c *Conn) Start() { go c.watch() }

// ExtendRead does nothing: a stream has no read deadline (the heartbeats find a client
// that went).
func (c *Conn) ExtendRead() {}

// Stop stops the heartbeats, once the session is finished.
func (c *Conn) Stop() {
	if c.ping != nil {
		c.ping.Stop()
	}
}

// watch reads until the client closes the connection (or the socket is closed: a write
// failed, or the stream ended), then ends the session. What a client sends on a stream is
// discarded.
func (c *Conn) watch() {
	defer func() {
		if v := recover(); v != nil {
			c.s.Recovered(v)
		}
	}()
	var buf [64]byte
	for {
		if _, err := c.sock.Conn.Read(buf[:]); err != nil {
			c.q.Abort(wire.CloseAbnormal, "")
			c.s.Log().Debug("stream ended", "err", err)
			c.s.ReadEnded()
			c.s.End()
			return
		}
	}
}

// SendClose ends the stream after the queue's last frame: an error event that says why
// and what to do, then the end of the response. Called by the session's writer.
func (c *Conn) SendClose(code int, text string) {
	if _, err := c.sock.Write(CloseEvent(code, text)); err != nil {
		c.s.Log().Debug("close event not sent", "code", code, "err", err)
	}
	c.sock.CloseWrite()
	_ = c.sock.Conn.SetReadDeadline(time.Now().Add(closeGrace))
}

// Refuse ends a stream that no session took (the gateway began draining as it opened).
func (c *Conn) Refuse(code int, text string) {
	_, _ = c.sock.Write(CloseEvent(code, text))
	_ = c.sock.Close()
	c.Stop()
}

// closeEvent is the data of the error event that ends a stream.
type closeEvent struct {
	Op      string `json:"op"`
	Code    string `json:"code"`
	Close   int    `json:"close"`
	Message string `json:"message"`
}

// CloseEvent returns the error event that ends a stream closed with code (a WebSocket
// close code: the same reasons end both transports) and text: a code name, and in the
// message what the client should do.
func CloseEvent(code int, text string) []byte {
	name, todo := "closed", "reconnect with Last-Event-ID to resume"
	switch code {
	case wire.CloseGoingAway:
		name, todo = "going_away", "reconnect (EventSource does so by itself) with Last-Event-ID: another gateway resumes the stream"
	case wire.CloseSlowConsumer:
		name, todo = "slow_consumer", "the stream was read too slowly: reconnect with Last-Event-ID to resume"
	case wire.ClosePolicyViolation:
		name, todo = "token_expired", "reconnect with a fresh token and Last-Event-ID"
	case wire.CloseRateLimited:
		name, todo = "rate_limited", "slow down, then reconnect with Last-Event-ID"
	case wire.CloseInternalError:
		name = "internal_error"
	}
	msg := todo
	if text != "" {
		msg = text + ": " + todo
	}
	payload := wire.Marshal(closeEvent{Op: "error", Code: name, Close: code, Message: msg})
	return wire.AppendEvent(nil, payload, -1)
}
