package gateway

import (
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/heraldgw/herald/gateway/internal/logsample"
	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/gateway/internal/writer"
	"github.com/heraldgw/herald/gateway/internal/wsframe"
	"github.com/heraldgw/herald/producer/message"
)

// closeGrace is how long a connection waits for the peer's close frame after sending its
// own, before it drops the TCP connection.
const closeGrace = time.Second

// Conn is one client's WebSocket connection. The read pump (a goroutine of its own)
// reads and answers the client's frames. Everyone else, the hub's fan-out included, hands
// frames to its write queue (the embedded writer.Queue: Enqueue never blocks), whose
// writer writes them (package writer). An idle connection so has one parked goroutine
// and no buffers of its own beyond the small read buffer.
type Conn struct {
	// Queue is the connection's write queue and its writer's state. First, so that the
	// hub's Enqueue, a method promoted from it, is reached with no offset to add.
	writer.Queue

	id   string
	usr  string
	srv  *Server
	ws   *websocket.Conn
	nc   *netConn
	log  *slog.Logger
	once sync.Once   // finish runs once
	ping *time.Timer // fires every PingInterval to have the writer ping the client
	// edge is the connection's identity, permissions and frame rate (limits.go); set
	// before the read pump starts, then owned by it.
	edge *connEdge
	// deflate says that the connection negotiated permessage-deflate: its frames go
	// compressed (writer.Queue) and its messages come compressed. Set by newConn.
	deflate *wire.Deflater
	// pongSeq is the number of the latest ping a pong has answered; the read pump owns
	// it.
	pongSeq uint32
}

// newConn returns the connection of user over ws and nc; deflate, when not nil,
// compresses its frames.
func newConn(s *Server, ws *websocket.Conn, nc *netConn, user string, deflate *wire.Deflater) *Conn {
	id := message.NewID()[:16]
	c := &Conn{
		id:      id,
		usr:     user,
		srv:     s,
		ws:      ws,
		nc:      nc,
		log:     s.logger.With("conn", id),
		deflate: deflate,
	}
	c.Queue.Init(s.writer, &nc.Socket, wire.Encoding{Deflate: deflate}, c)
	c.ping = time.AfterFunc(s.cfg.PingInterval, c.pingTick)
	return c
}

// pingTick runs on the ping timer: it asks the writer for a ping, and sets the timer again.
func (c *Conn) pingTick() {
	select {
	case <-c.Done():
		return
	default:
	}
	c.Ping()
	c.ping.Reset(c.srv.cfg.PingInterval)
}

// User is the connection's user; empty when anonymous.
func (c *Conn) User() string { return c.usr }

// Overflowed logs a slow consumer's close (writer.Owner).
func (c *Conn) Overflowed(dropped int) {
	c.log.Info("slow consumer closed", "user", logsample.Clip(c.usr), "dropped", dropped)
}

// WriteFailed logs a failed write (writer.Owner).
func (c *Conn) WriteFailed(err error) { c.log.Debug("write failed", "err", err) }

// enqueueReplay queues a replayed frame at the client's pace (writer.Queue.EnqueueReplay);
// while it waits for room, the read deadline keeps moving: the read pump may be the one
// replaying.
func (c *Conn) enqueueReplay(f *wire.Frame) bool {
	return c.EnqueueReplay(f, c.srv.cfg.PingInterval, c.extendRead)
}

// SendClose sends a close frame and half-closes the socket; the read pump then ends on
// the peer's close frame, or after closeGrace (writer.Owner).
func (c *Conn) SendClose(code int, text string) {
	err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text),
		time.Now().Add(c.srv.cfg.WriteTimeout))
	if err != nil {
		c.log.Debug("close frame not sent", "code", code, "err", err)
	}
	c.nc.CloseWrite()
	_ = c.nc.SetReadDeadline(time.Now().Add(closeGrace))
}

// readPump reads the client's frames and answers them until the connection ends, then
// finishes the connection. It waits for the next frame in a shallow call, and once it has
// handled every frame that arrived it hands over to a fresh goroutine: reading a frame
// grows a goroutine's stack, and an idle connection should not keep a grown one.
func (c *Conn) readPump() {
	defer c.recoverAndFinish()
	for {
		if err := c.awaitFrame(); err != nil {
			c.readEnded(err)
			c.finish()
			return
		}
		mt, data, err := c.readMessage()
		if err != nil && !errors.Is(err, errInflatedTooBig) {
			c.readEnded(err)
			c.finish()
			return
		}
		switch {
		case c.Closing():
			// read until the peer's close frame or the grace deadline
		case err != nil:
			c.srv.metrics.LimitHit(metrics.LimitFrameSize)
			c.RequestClose(websocket.CloseMessageTooBig, "message too big once decompressed", false)
		case mt == websocket.BinaryMessage:
			c.RequestClose(websocket.CloseUnsupportedData, "binary frames are not supported", false)
		case !utf8.Valid(data):
			c.RequestClose(websocket.CloseInvalidFramePayloadData, "text frame is not valid UTF-8", false)
		default:
			c.extendRead()
			c.handle(data)
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
	if c.deflate == nil {
		return c.ws.ReadMessage()
	}
	mt, r, err := c.ws.NextReader()
	if err != nil {
		return mt, nil, err
	}
	limit := c.srv.cfg.MaxMessageBytes
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

// recoverAndFinish, deferred by a goroutine that finishes the connection when it ends,
// turns a panic there into a log line, a count and the end of this connection only.
func (c *Conn) recoverAndFinish() {
	if v := recover(); v != nil {
		c.Panicked(v)
		c.Abort(wire.CloseInternalError, "internal error")
		c.finish()
	}
}

// Panicked logs and counts a panic recovered while serving the connection; the caller
// ends what the panic interrupted (writer.Owner).
func (c *Conn) Panicked(v any) {
	c.srv.metrics.Panicked()
	c.log.Error("panic while serving a connection; closing it", "panic", v, "stack", string(debug.Stack()))
}

// startReading sets the read limits and handlers, then starts the read pump.
func (c *Conn) startReading() {
	l := &c.srv.cfg.Limits
	c.nc.in.Init(wsframe.Config{Deflate: c.nc.deflate, FrameRate: l.FrameRate, FrameBurst: l.FrameBurst, MaxFragments: l.MaxFragments})
	c.ws.SetReadLimit(c.srv.cfg.MaxMessageBytes)
	c.ws.SetPongHandler(func(p string) error { c.pong([]byte(p)); return nil })
	c.ws.SetPingHandler(c.answerPing)
	c.extendRead()
	go c.readPump()
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
	err := c.ws.WriteControl(websocket.PongMessage, []byte(payload), time.Now().Add(c.srv.cfg.WriteTimeout))
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
		latest := c.LatestPing()
		if seq == uint64(latest) && latest != c.pongSeq {
			c.pongSeq = latest
			c.extendRead()
			return
		}
	}
	c.srv.metrics.PongIgnored()
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

// extendRead moves the read deadline on while the connection is open: the client has
// PongTimeout to answer each ping.
func (c *Conn) extendRead() {
	if !c.Closing() {
		_ = c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.PingInterval + c.srv.cfg.PongTimeout))
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
	c.Abort(code, "")
	c.log.Debug("read ended", "code", code, "err", err)
	c.edge.stop() // the token's timer, and the connection's slots
	// Over the size limit (not a peer's close frame with 1009): the library has sent 1009.
	if errors.Is(err, websocket.ErrReadLimit) {
		c.srv.metrics.LimitHit(metrics.LimitFrameSize)
		c.closeAfterRead()
	}
	if v != nil {
		c.failRead(v)
	}
}

// failRead fails the connection for what the read pump found (a frame the inspector
// refused, or a message that is not deflate data): it sends the close frame itself, now,
// since reading ends here and the frame must be on the wire before the socket closes (a
// writer at work finishes its write first; batchConn lets nothing follow the close
// frame). Called by the read pump.
func (c *Conn) failRead(v *wsframe.Violation) {
	if v.Limit != "" {
		c.srv.metrics.LimitHit(v.Limit)
	}
	c.srv.refusals.Log(slog.LevelInfo, logFrameViolation, "closing: frame refused", "conn", c.id, "code", v.Code, "why", v.Reason)
	err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(v.Code, v.Reason),
		time.Now().Add(c.srv.cfg.WriteTimeout))
	if err != nil {
		c.log.Debug("close frame not sent", "code", v.Code, "err", err)
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

// finish ends the connection, once; see end.
func (c *Conn) finish() { c.once.Do(c.end) }

// end ends the connection: it leaves the hub, finishes the write queue (what is still
// queued is dropped, the socket closed, the writer ended), stops the pings and lets
// Shutdown know. Called once, by the read pump.
func (c *Conn) end() {
	c.srv.hub.leave(c)
	code := c.Finish()
	c.ping.Stop()
	c.srv.metrics.Closed(code)
	c.log.Debug("connection finished", "code", code)
	c.srv.untrack(c) // last: Shutdown may return once every connection is untracked
}

// handle answers one client frame. A frame over the connection's rate is answered with
// error rate_limited and not acted on. A panic here is recovered, and closes only this
// connection, with 1011.
func (c *Conn) handle(data []byte) {
	defer c.recoverPanic()
	if ok, tooLong := c.edge.allowFrame(); !ok {
		c.rateLimited(data, tooLong)
		return
	}
	r, perr := decodeRequest(data)
	if perr != nil {
		c.replyError(perr.code, perr.msg, r.Ref)
		return
	}
	switch r.Op {
	case "subscribe":
		ch := *r.Channel
		if perr := c.mayJoin(ch); perr != nil {
			c.replyError(perr.code, perr.msg, r.Ref)
			return
		}
		watch := r.Presence && c.srv.presence.enabled(ch)
		answer := func() {
			c.Enqueue(wire.Reply(replyFrame{Op: "subscribed", Channel: ch, Ref: r.Ref, Presence: watch}))
		}
		if r.Since == nil {
			c.srv.hub.subscribe(c, ch, watch, answer)
			return
		}
		// Replay the channel from since, then subscribe live: until then c is not
		// subscribed (the replay reads what live delivery would have sent).
		c.srv.hub.unsubscribe(c, ch, answer)
		c.srv.resumeChannel(c, ch, *r.Since, watch)
	case "unsubscribe":
		ch := *r.Channel
		c.srv.hub.unsubscribe(c, ch, func() {
			c.Enqueue(wire.Reply(replyFrame{Op: "unsubscribed", Channel: ch, Ref: r.Ref}))
		})
	case "presence":
		c.answerPresence(r)
	case "publish":
		c.publish(r)
	case "refresh":
		c.refresh(r)
	}
}

// publish puts a client's message on the bus and answers ack, or error when the bus did
// not take it.
func (c *Conn) publish(r request) {
	if c.srv.cfg.DisableClientPublish {
		c.replyError(CodeForbidden, "clients may not publish on this gateway", r.Ref)
		return
	}
	m := message.Message{From: c.usr, Data: r.Data, Source: metrics.SourceWS}
	if r.Channel != nil {
		m.Channel = *r.Channel
	}
	if !c.edge.mayPublish(m.Channel) {
		c.replyError(CodeForbidden, notPermitted("publish to", m.Channel), r.Ref)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.srv.cfg.PublishTimeout)
	id, err := c.srv.publish(ctx, m)
	cancel()
	if err != nil {
		if isInvalid(err) {
			c.replyError(CodeBadRequest, err.Error(), r.Ref)
			return
		}
		c.srv.metrics.PublishFailed(metrics.SourceWS)
		c.log.Warn("client publish failed", "err", err)
		c.replyError(CodeUnavailable, "the bus cannot take messages now; retry", r.Ref)
		return
	}
	c.srv.metrics.Published(metrics.SourceWS)
	c.Enqueue(wire.Reply(replyFrame{Op: "ack", Ref: r.Ref, ID: id}))
}

func (c *Conn) replyError(code, msg, ref string) {
	c.srv.metrics.ClientError(code)
	c.Enqueue(wire.Reply(errorFrame{Op: "error", Code: code, Message: msg, Ref: ref}))
}

// isInvalid reports whether a publish failed because the message itself is invalid.
func isInvalid(err error) bool {
	return errors.Is(err, message.ErrBadChannel) || errors.Is(err, message.ErrNoData) ||
		errors.Is(err, message.ErrBadData) || errors.Is(err, message.ErrBadUser) || errors.Is(err, message.ErrBadID)
}
