// Package wstransport is the gateway's WebSocket transport: the upgrade of an HTTP
// request (with the small read buffer and the frame inspector under the library's
// reader), the read pump that hands the client's messages to its session, the pings and
// the pongs that keep the read deadline moving, and the close handshake. It knows nothing
// of what the messages mean: the session does (package gateway), through the Session
// interface defined here. Frames to the client do not pass through it: the session's
// writer.Queue writes them to the Socket the transport hands it, in the encoding it
// negotiated.
package wstransport

import (
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/heraldgw/herald/gateway/internal/logsample"
	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/gateway/internal/writer"
	"github.com/heraldgw/herald/gateway/internal/wsframe"
)

// closeGrace is how long a connection waits for the peer's close frame after sending its
// own, before it drops the TCP connection.
const closeGrace = time.Second

// Config is what the WebSocket connections of a server share. NewUpgrader copies it;
// nothing changes it after.
type Config struct {
	// Subprotocol is echoed to a client that offers it.
	Subprotocol string
	// Compression negotiates permessage-deflate with clients that offer it: frames of
	// CompressionMinBytes or more go to them compressed at CompressionLevel (1 to 9),
	// each once for all of them.
	Compression         bool
	CompressionMinBytes int
	CompressionLevel    int
	// CheckOrigin decides whether a request's origin may connect (before the upgrade).
	CheckOrigin func(*http.Request) bool
	// Refuse answers a handshake the library refuses (a bad request), with status.
	Refuse func(w http.ResponseWriter, r *http.Request, status int, reason error)
	// PingInterval is how often the client is pinged; PongTimeout how long after a ping
	// is due the client may stay silent before the connection is dropped.
	PingInterval, PongTimeout time.Duration
	// WriteTimeout bounds each write to a socket.
	WriteTimeout time.Duration
	// SocketSendBuffer, when positive, is each socket's SO_SNDBUF.
	SocketSendBuffer int
	// MaxMessageBytes caps a client message, reassembled (and decompressed).
	MaxMessageBytes int64
	// FrameRate, FrameBurst and MaxFragments are the frame inspector's limits
	// (wsframe.Config).
	FrameRate    float64
	FrameBurst   int
	MaxFragments int
	// Metrics counts pongs ignored and limits hit. Default: counted nowhere.
	Metrics *metrics.Metrics
	// Refusals writes the sampled log lines of frames refused (reason LogFrameViolation).
	Refusals *logsample.Sampler

	deflater *wire.Deflater // set by NewUpgrader where Compression is on
}

// LogFrameViolation is the reason of the sampled log line of a frame refused (a
// logsample.Sampler reason): a client may repeat it at will.
const LogFrameViolation = "frame_violation"

// Session is the client's session a Conn serves. The read pump calls it, never under a
// lock of the transport's.
type Session interface {
	// Handle acts on one message from the client: whole, valid UTF-8 text.
	Handle(data []byte)
	// ReadEnded is told that reading ended (the client went, or is being closed): the
	// session lets go at once of what it holds for a live client (its token timer, its
	// connection slots). End follows.
	ReadEnded()
	// End ends the session: called by the read pump as it ends.
	End()
	// Recovered is told of a panic recovered in the read pump: the session counts and
	// logs it, closes with 1011 and ends.
	Recovered(v any)
	// ID names the connection in the log lines of refusals.
	ID() string
	// Log is the connection's logger.
	Log() *slog.Logger
}

// Upgrader upgrades HTTP requests to WebSocket connections.
type Upgrader struct {
	cfg Config
	up  websocket.Upgrader
}

// NewUpgrader returns an Upgrader of connections configured by cfg, or an error where
// cfg's compression level is not one.
func NewUpgrader(cfg Config) (*Upgrader, error) {
	if cfg.Compression {
		if cfg.CompressionLevel < flate.BestSpeed || cfg.CompressionLevel > flate.BestCompression {
			return nil, fmt.Errorf("gateway: compression level %d: want 1 to 9", cfg.CompressionLevel)
		}
		cfg.deflater = wire.NewDeflater(cfg.CompressionMinBytes, cfg.CompressionLevel, cfg.Metrics.Compressed)
	}
	u := &Upgrader{cfg: cfg}
	u.up = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		Subprotocols:     []string{cfg.Subprotocol},
		// With a pool, the library keeps no write buffer per connection (data frames
		// bypass it; only its control frames are written through it).
		WriteBufferPool:   &sync.Pool{},
		EnableCompression: cfg.Compression,
		CheckOrigin:       cfg.CheckOrigin,
		Error:             cfg.Refuse,
	}
	return u, nil
}

// Conn is one client's WebSocket connection, on the transport's side: the socket and the
// library's connection over it, its read pump, its pings. Upgrade makes it; Init binds it
// to its session; Start starts reading.
type Conn struct {
	nc  netConn // the connection the library reads and writes through
	ws  *websocket.Conn
	cfg *Config

	// Set by Init, before the read pump starts.
	s    Session
	q    *writer.Queue // the session's queue: pings, the close state
	ping *time.Timer   // fires every PingInterval to have the writer ping the client
}

// Upgrade upgrades r to a WebSocket connection, or answers the request itself (the
// library's refusals go to Config.Refuse) and returns the error.
func (u *Upgrader) Upgrade(w http.ResponseWriter, r *http.Request) (*Conn, error) {
	c := &Conn{cfg: &u.cfg}
	rec := &hijackRecorder{ResponseWriter: w, timeout: u.cfg.WriteTimeout, sndbuf: u.cfg.SocketSendBuffer, conn: c}
	ws, err := u.up.Upgrade(rec, r, nil)
	if err != nil {
		return nil, err
	}
	c.ws = ws
	if c.nc.deflate {
		u.cfg.Metrics.NegotiatedCompression()
	}
	return c, nil
}

// Encoding is how frames go to this connection: compressed with permessage-deflate,
// each once for every connection that negotiated it, or as made. The session's queue
// writes in it.
func (c *Conn) Encoding() wire.Encoding {
	if c.nc.deflate {
		return wire.Encoding{Deflate: c.cfg.deflater}
	}
	return wire.Encoding{}
}

// Socket is the connection's socket, for the session's write queue.
func (c *Conn) Socket() *writer.Socket { return &c.nc.Socket }

// Init binds c to its session s, whose queue q writes to c's Socket, and starts the
// pings.
func (c *Conn) Init(s Session, q *writer.Queue) {
	c.s, c.q = s, q
	c.ping = time.AfterFunc(c.cfg.PingInterval, c.pingTick)
}

// Refuse closes a connection that no session took (the gateway began draining during its
// upgrade) with code: the close frame, then the socket.
func (c *Conn) Refuse(code int, text string) {
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text),
		time.Now().Add(time.Second))
	_ = c.ws.Close()
	c.Stop()
}

// pingTick runs on the ping timer: it asks the writer for a ping, and sets the timer again.
func (c *Conn) pingTick() {
	select {
	case <-c.q.Done():
		return
	default:
	}
	c.q.Ping()
	c.ping.Reset(c.cfg.PingInterval)
}

// Stop stops the pings, once the session is finished.
func (c *Conn) Stop() {
	if c.ping != nil {
		c.ping.Stop()
	}
}

// SendClose sends a close frame and half-closes the socket; the read pump then ends on
// the peer's close frame, or after closeGrace. Called by the session's writer.
func (c *Conn) SendClose(code int, text string) {
	err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text),
		time.Now().Add(c.cfg.WriteTimeout))
	if err != nil {
		c.s.Log().Debug("close frame not sent", "code", code, "err", err)
	}
	c.nc.CloseWrite()
	_ = c.nc.SetReadDeadline(time.Now().Add(closeGrace))
}

// Start sets the read limits and handlers, then starts the read pump.
func (c *Conn) Start() {
	c.nc.in.Init(wsframe.Config{Deflate: c.nc.deflate, FrameRate: c.cfg.FrameRate, FrameBurst: c.cfg.FrameBurst, MaxFragments: c.cfg.MaxFragments})
	c.ws.SetReadLimit(c.cfg.MaxMessageBytes)
	c.ws.SetPongHandler(func(p string) error { c.pong([]byte(p)); return nil })
	c.ws.SetPingHandler(c.answerPing)
	c.ExtendRead()
	go c.readPump()
}

// readPump reads the client's frames and answers them until the connection ends, then
// ends the session. It waits for the next frame in a shallow call, and once it has
// handled every frame that arrived it hands over to a fresh goroutine: reading a frame
// grows a goroutine's stack, and an idle connection should not keep a grown one.
func (c *Conn) readPump() {
	defer func() {
		if v := recover(); v != nil {
			c.s.Recovered(v)
		}
	}()
	for {
		if err := c.awaitFrame(); err != nil {
			c.readEnded(err)
			c.s.End()
			return
		}
		mt, data, err := c.readMessage()
		if err != nil && !errors.Is(err, errInflatedTooBig) {
			c.readEnded(err)
			c.s.End()
			return
		}
		switch {
		case c.q.Closing():
			// read until the peer's close frame or the grace deadline
		case err != nil:
			c.cfg.Metrics.LimitHit(metrics.LimitFrameSize)
			c.q.RequestClose(websocket.CloseMessageTooBig, "message too big once decompressed", false)
		case mt == websocket.BinaryMessage:
			c.q.RequestClose(websocket.CloseUnsupportedData, "binary frames are not supported", false)
		case !utf8.Valid(data):
			c.q.RequestClose(websocket.CloseInvalidFramePayloadData, "text frame is not valid UTF-8", false)
		default:
			c.ExtendRead()
			c.s.Handle(data)
		}
		if c.nc.br != nil && c.nc.br.Buffered() == 0 {
			go c.readPump()
			return
		}
	}
}

// errInflatedTooBig is a compressed client message that decompresses past the size limit.
var errInflatedTooBig = errors.New("gateway: message too big once decompressed")

// readMessage reads the client's next message whole. The WebSocket library holds a
// message to the size limit as it comes on the wire, compressed; decompressed, it could be
// a thousand times larger. So where compression is negotiated, the message is read
// through a limit of its own, and one that decompresses past the limit is not read
// further: errInflatedTooBig (the library discards the rest before the next message).
func (c *Conn) readMessage() (int, []byte, error) {
	if !c.nc.deflate {
		return c.ws.ReadMessage()
	}
	mt, r, err := c.ws.NextReader()
	if err != nil {
		return mt, nil, err
	}
	limit := c.cfg.MaxMessageBytes
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err == nil && int64(len(data)) > limit {
		return mt, nil, errInflatedTooBig
	}
	var corrupt flate.CorruptInputError
	if errors.As(err, &corrupt) || errors.Is(err, io.ErrUnexpectedEOF) {
		// Not deflate data (RFC 7692 section 8: fail the connection with 1007). The
		// inflater's own errors: the library reports a connection that ends inside a
		// message as a CloseError (1006), not io.ErrUnexpectedEOF.
		return mt, nil, &wsframe.Violation{Code: websocket.CloseInvalidFramePayloadData, Reason: "compressed message is not valid deflate data"}
	}
	return mt, data, err
}

// answerPing answers a ping from the client with a pong, unless the next frame, already
// buffered, is a ping too: RFC 6455 section 5.5.3 lets the pong of the latest ping
// answer those before it, so a burst of pings costs one write, not one each. Called by
// the read pump (the WebSocket library's ping handler).
func (c *Conn) answerPing(payload string) error {
	if br := c.nc.br; br != nil && br.Buffered() >= 2 {
		if next, _ := br.Peek(2); next[0] == wire.Fin|wire.OpPing && next[1]&wire.Masked != 0 {
			return nil
		}
	}
	err := c.ws.WriteControl(websocket.PongMessage, []byte(payload), time.Now().Add(c.cfg.WriteTimeout))
	if err != nil && !errors.Is(err, websocket.ErrCloseSent) && !errors.Is(err, writer.ErrCloseSent) {
		var ne net.Error
		if !errors.As(err, &ne) {
			return err
		}
	}
	return nil // as the library's own handler: a pong that cannot be written is no reason to stop reading
}

// pong takes a pong from the client, with its payload. Only the first pong that answers
// the gateway's latest ping, outside a partly received message, moves the read deadline;
// any other (unsolicited, a repeat, or one among the frames of a message that has not
// ended) is counted and ignored, so that a client cannot keep a connection, or a message
// it never finishes, open by sending pongs. Called by the read pump.
func (c *Conn) pong(p []byte) {
	if len(p) == wire.PingPayloadLen && !c.nc.in.InMessage() {
		seq := binary.BigEndian.Uint64(p)
		latest := c.q.LatestPing()
		if seq == uint64(latest) && latest != c.nc.pongSeq {
			c.nc.pongSeq = latest
			c.ExtendRead()
			return
		}
	}
	c.cfg.Metrics.PongIgnored()
}

// awaitFrame waits until a frame has begun to arrive. A pong, which it sees whole in the
// buffer, it consumes itself (and hands to pong, as the library's pong handler would):
// the library, given a pong, would go on waiting for a data frame deep in its own calls.
// It is called only between messages, so the library's reading state is not disturbed.
// Without access to the buffered reader it returns at once.
func (c *Conn) awaitFrame() error {
	br := c.nc.br
	if br == nil {
		return nil
	}
	for {
		head, err := br.Peek(2)
		if err != nil {
			return err
		}
		size := wire.MaskKeyLen + int(head[1]&wire.LenMask)
		if head[0] != wire.Fin|wire.OpPong || head[1]&wire.Masked == 0 || size-wire.MaskKeyLen > wire.MaxControlPayload {
			return nil // not a well-formed client pong (final, no RSV bits, masked): the library reads it
		}
		frame, err := br.Peek(2 + size)
		if err != nil {
			return err
		}
		var payload [wire.PingPayloadLen]byte
		n := 0
		if size-wire.MaskKeyLen == wire.PingPayloadLen { // only such a pong can answer a ping
			key := frame[2 : 2+wire.MaskKeyLen]
			for i, b := range frame[2+wire.MaskKeyLen:] {
				payload[i] = b ^ key[i%wire.MaskKeyLen]
			}
			n = wire.PingPayloadLen
		}
		_, _ = br.Discard(2 + size)
		c.pong(payload[:n])
	}
}

// ExtendRead moves the read deadline on while the connection is open: the client has
// PongTimeout to answer each ping. The session calls it too while its work holds the
// read pump (a replay).
func (c *Conn) ExtendRead() {
	if !c.q.Closing() {
		_ = c.nc.SetReadDeadline(time.Now().Add(c.cfg.PingInterval + c.cfg.PongTimeout))
	}
}

// readEnded records why reading ended, as the close code the connection ends with
// unless one was already set. After a frame over the size limit, the WebSocket library
// has sent close 1009; the rest of the client's frame is read and discarded for a
// moment, so that closing does not reset the connection before the client reads why.
func (c *Conn) readEnded(err error) {
	code := websocket.CloseAbnormalClosure
	var ce *websocket.CloseError
	var v *wsframe.Violation
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		code = websocket.CloseMessageTooBig
	case errors.As(err, &ce):
		code = ce.Code
	case errors.As(err, &v):
		code = v.Code
	}
	c.q.Abort(code, "")
	c.s.Log().Debug("read ended", "code", code, "err", err)
	c.s.ReadEnded() // the token's timer, and the connection's slots
	// Over the size limit (not a peer's close frame with 1009): the library has sent 1009.
	if errors.Is(err, websocket.ErrReadLimit) {
		c.cfg.Metrics.LimitHit(metrics.LimitFrameSize)
		c.closeAfterRead()
	}
	if v != nil {
		c.failRead(v)
	}
}

// failRead fails the connection for what the read pump found (a frame the inspector
// refused, or a message that is not deflate data): it sends the close frame itself, now,
// since reading ends here and the frame must be on the wire before the socket closes (a
// writer at work finishes its write first; the Socket lets nothing follow the close
// frame). Called by the read pump.
func (c *Conn) failRead(v *wsframe.Violation) {
	if v.Limit != "" {
		c.cfg.Metrics.LimitHit(v.Limit)
	}
	c.cfg.Refusals.Log(slog.LevelInfo, LogFrameViolation, "closing: frame refused", "conn", c.s.ID(), "code", v.Code, "why", v.Reason)
	err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(v.Code, v.Reason),
		time.Now().Add(c.cfg.WriteTimeout))
	if err != nil {
		c.s.Log().Debug("close frame not sent", "code", v.Code, "err", err)
	}
	c.closeAfterRead()
}

// maxDrain bounds what closeAfterRead reads and discards: a client that goes on sending
// after the close frame (a flood does) is cut off past it, rather than costing the
// gateway a second of reading at full speed per connection.
const maxDrain = 64 << 10

// closeAfterRead, once a close frame is sent, half-closes the socket and reads and
// discards what the client still sends, for closeGrace at most, so that the socket is
// not reset (which could lose the close frame) before the client has read it.
func (c *Conn) closeAfterRead() {
	c.nc.CloseWrite()
	_ = c.nc.SetReadDeadline(time.Now().Add(closeGrace))
	_, _ = io.CopyN(io.Discard, c.nc.Socket.Conn, maxDrain)
}
