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
	"github.com/heraldgw/herald/gateway/internal/wsframe"
	"github.com/heraldgw/herald/producer/message"
)

// closeGrace is how long a connection waits for the peer's close frame after sending its
// own, before it drops the TCP connection.
const closeGrace = time.Second

// batchFlushBytes is where the write pump sends a batch and starts the next one, so a
// long queue goes out in writes of bounded size.
const batchFlushBytes = 64 << 10

// Conn is one client's WebSocket connection. The read pump (a goroutine of its own)
// reads and answers the client's frames. Everyone else, the hub's fan-out included, hands
// frames to the write queue with enqueue, which never blocks; when there is something to
// write, a writer worker takes the queue and writes it without waiting on the socket (see
// writerPool), and a socket that is slow to take it gets a writer goroutine of its own
// until its queue is empty. An idle connection so has one parked goroutine and no buffers
// of its own beyond the small read buffer.
type Conn struct {
	id   string
	usr  string
	srv  *Server
	ws   *websocket.Conn
	nc   *batchConn
	log  *slog.Logger
	room chan struct{} // room for one signal from the writer: it wrote a batch
	done chan struct{} // closed when the connection is finished (see finish)
	once sync.Once     // finish runs once
	ping *time.Timer   // fires every PingInterval to have the writer ping the client
	// edge is the connection's identity, permissions and frame rate (limits.go); set
	// before the read pump starts, then owned by it.
	edge *connEdge
	// deflate compresses the frames written to a connection that negotiated
	// permessage-deflate; nil: frames go plain. Set before the connection starts.
	deflate *wire.Deflater

	// mu protects skip, queue, queued, the close fields, pingDue, pingSeq, writing and
	// spare.
	mu     sync.Mutex
	skip   int64 // frames of messages at or below this offset were replayed: drop them
	queue  []*wire.Frame
	queued int // bytes in queue
	// inflight and inflightBytes are the frames and bytes the writer has taken from the
	// queue and is writing now: still waiting, for the queue depth gauges.
	inflight, inflightBytes int
	closeCode               int    // 0 while open; the close code once a close is asked for
	closeText               string // the close frame's reason
	flushFirst              bool   // send what is queued before the close frame
	pingDue                 bool   // the writer should send a ping
	pingSeq                 uint32 // the number of the latest ping asked for (1 and up)
	// writing is true while c has a writer (a worker's turn, queued or under way, or a
	// writeLoop goroutine), and for good once the writing side is closed (close frame
	// sent, or a write failed): at most one writer is ever at work. finished is set by
	// finish: no writer starts after it. writers counts the writer, for finish to wait
	// for; it is added to only under mu, before finished.
	writing  bool
	finished bool
	// pongSeq is the number of the latest ping a pong has answered; the read pump owns
	// it.
	pongSeq uint32
	writers sync.WaitGroup
	// scheduled is true while c waits in the flusher for the next tick; flushedTick is
	// the tick of c's last write (see flusher).
	scheduled   bool
	flushedTick int64
	roomWanted  bool          // a replay waits for the writer to make room
	spare       []*wire.Frame // the last batch's slice, reused for the next queue
}

func newConn(s *Server, ws *websocket.Conn, nc *batchConn, user string) *Conn {
	id := message.NewID()[:16]
	c := &Conn{
		id:   id,
		usr:  user,
		srv:  s,
		ws:   ws,
		nc:   nc,
		log:  s.logger.With("conn", id),
		room: make(chan struct{}, 1),
		done: make(chan struct{}),
		skip: noSkip,
	}
	c.ping = time.AfterFunc(s.cfg.PingInterval, c.pingTick)
	return c
}

// pingTick runs on the ping timer: it asks the writer for a ping, and sets the timer again.
func (c *Conn) pingTick() {
	select {
	case <-c.done:
		return
	default:
	}
	c.mu.Lock()
	c.pingDue = true
	if c.pingSeq++; c.pingSeq == 0 { // 0 means no ping (writeTask)
		c.pingSeq = 1
	}
	c.startWriter()
	c.mu.Unlock()
	c.ping.Reset(c.srv.cfg.PingInterval)
}

func (c *Conn) user() string { return c.usr }

func (c *Conn) skipThrough(offset int64) {
	c.mu.Lock()
	c.skip = offset
	c.mu.Unlock()
}

// enqueue adds f to the write queue without blocking. If that would take the queue over
// its byte cap, the connection is closed as a slow consumer (4008) instead, and what it
// had queued is dropped: the client resumes from its last offset when it reconnects.
func (c *Conn) enqueue(f *wire.Frame) {
	c.mu.Lock()
	if f.Offset >= 0 && f.Offset <= c.skip {
		c.mu.Unlock() // a replay has given it already
		return
	}
	if c.closeCode != 0 {
		c.mu.Unlock()
		c.srv.metrics.Dropped(metrics.DropClosed, 1)
		return
	}
	if c.queued+f.Size() > c.srv.cfg.WriteQueueBytes {
		dropped := len(c.queue) + 1
		c.closeCode, c.closeText, c.flushFirst = CloseSlowConsumer, "slow consumer: write queue full", false
		c.clearQueue()
		c.startWriter()
		c.mu.Unlock()
		c.srv.metrics.Dropped(metrics.DropSlowConsumer, dropped)
		c.srv.metrics.SlowConsumer()
		c.log.Info("slow consumer closed", "user", logsample.Clip(c.usr), "dropped", dropped)
		return
	}
	c.queue = append(c.queue, f)
	c.queued += f.Size()
	c.startWriter()
	c.mu.Unlock()
}

// enqueueReplay queues a replayed frame, waiting while the queue is over half its cap so
// that a long replay goes at the client's pace, within the cap. It reports false when the
// connection closed first. Called by the goroutine that replays, never by fan-out.
func (c *Conn) enqueueReplay(f *wire.Frame) bool {
	for {
		c.mu.Lock()
		if c.closeCode != 0 {
			c.mu.Unlock()
			return false
		}
		if c.queued == 0 || c.queued+f.Size() <= c.srv.cfg.WriteQueueBytes/2 {
			c.queue = append(c.queue, f)
			c.queued += f.Size()
			c.startWriter()
			c.mu.Unlock()
			return true
		}
		c.roomWanted = true
		c.mu.Unlock()
		select {
		case <-c.room:
		case <-c.done:
			return false
		case <-time.After(c.srv.cfg.PingInterval):
			// The read pump may be the one replaying: keep its deadline moving while
			// the client reads.
			c.extendRead()
		}
	}
}

// startWriter makes a writer for c if none is at work and there is something to write: a
// turn at a writer worker, or a writeLoop goroutine for a close (or where the server has
// no workers). For frames of a connection that has written in the current tick, it has
// the flusher do so at the next tick instead. c.mu must be held.
func (c *Conn) startWriter() {
	urgent := c.pingDue || c.closeCode != 0
	if c.writing || c.finished || (c.scheduled && !urgent) || (len(c.queue) == 0 && !urgent) {
		return
	}
	if f := c.srv.flusher; !urgent && f != nil && c.flushedTick == f.tick.Load() {
		c.scheduled = true
		f.schedule(c)
		return
	}
	c.writing = true
	c.writers.Add(1)
	if w := c.srv.writers; w != nil && c.closeCode == 0 && c.nc.direct {
		w.submit(c)
		return
	}
	go c.writeLoop(nil)
}

// clearQueue empties the queue. c.mu must be held.
func (c *Conn) clearQueue() {
	clear(c.queue)
	c.queue = c.queue[:0]
	c.queued = 0
}

// depth returns the number of frames and bytes waiting to be written: in the write queue,
// and in the batch being written.
func (c *Conn) depth() (frames, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue) + c.inflight, c.queued + c.inflightBytes
}

// requestClose asks the writer to close the connection with code; the first request
// wins. With flush, what is queued is sent before the close frame; without, it is dropped.
// Safe to call from any goroutine.
func (c *Conn) requestClose(code int, text string, flush bool) {
	c.mu.Lock()
	if c.closeCode != 0 {
		c.mu.Unlock()
		return
	}
	c.closeCode, c.closeText, c.flushFirst = code, text, flush
	dropped := 0
	if !flush {
		dropped = len(c.queue)
		c.clearQueue()
	}
	c.startWriter()
	c.mu.Unlock()
	if dropped > 0 {
		c.srv.metrics.Dropped(metrics.DropClosed, dropped)
	}
}

func (c *Conn) closing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeCode != 0
}

// maxSpare bounds the slice a connection keeps between batches, so that an idle
// connection does not hold a large one after a burst.
const maxSpare = 64

// writeLoop is the connection's writer on a goroutine of its own, for what a worker
// (writeTurn) does not do: it completes first, a turn a worker began (the rest of a write
// the socket did not take at once), then writes what is queued, everything queued in one
// write within the deadline, and the pings and the close frame, until there is nothing
// left to write; then it ends. It is the connection's only writer: startWriter makes at
// most one writer at a time (a worker's turn or this goroutine). The only other writes
// are the WebSocket library's pongs and close replies from the read pump, which
// batchConn serialises with the writer's, whole frames between whole frames.
func (c *Conn) writeLoop(first *writeTask) {
	defer c.writers.Done()
	defer func() {
		if v := recover(); v != nil {
			c.panicked(v)
			_ = c.nc.Close() // the read pump ends and finishes the connection
		}
	}()
	again := false // this goroutine has written in the current tick
	if first != nil {
		var err error
		unsent := 0
		if first.partial {
			rest := first.frames[len(first.frames)-first.restFrames:]
			if err = c.nc.flush(); err == nil {
				c.wroteFrames(rest, first.restData)
			} else {
				unsent = len(rest)
			}
		} else {
			sent := 0
			sent, err = c.writeBatch(first.frames, first.ping)
			unsent = len(first.frames) - sent
		}
		c.finishTurn(*first, err, unsent, false)
		if err != nil {
			return // writing stays true: no writer starts again
		}
		again = true
	}
	for {
		c.mu.Lock()
		t, ok := c.takeBatch(again)
		c.mu.Unlock()
		if !ok {
			return
		}
		again = true
		var err error
		sent := 0
		if t.code == 0 || t.flush {
			ping := t.ping
			if t.code != 0 {
				ping = 0
			}
			sent, err = c.writeBatch(t.frames, ping)
		}
		c.finishTurn(t, err, len(t.frames)-sent, false)
		if err != nil {
			return // writing stays true: no writer starts again
		}
		if t.code != 0 {
			c.sendClose(t.code, t.text)
			return
		}
	}
}

// writeBatch writes frames, and after them the ping numbered ping unless it is 0, to the
// socket: their bytes go into one pooled buffer, written in one call, or in calls of
// about batchFlushBytes for a long queue. It returns how many frames were written.
func (c *Conn) writeBatch(batch []*wire.Frame, ping uint32) (int, error) {
	bp := batchBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooledBatch {
			*bp = (*bp)[:0]
			batchBufs.Put(bp)
		}
	}()
	buf, start := (*bp)[:0], 0
	for i, f := range batch {
		buf = append(buf, c.wireOf(f)...)
		if len(buf) >= batchFlushBytes && i < len(batch)-1 {
			if _, err := c.nc.Write(buf); err != nil {
				return start, err
			}
			c.wroteFrames(batch[start:i+1], len(buf))
			buf, start = buf[:0], i+1
		}
	}
	data := len(buf)
	if ping != 0 {
		buf = wire.AppendPing(buf, ping)
	}
	if len(buf) > 0 {
		if _, err := c.nc.Write(buf); err != nil {
			return start, err
		}
		c.wroteFrames(batch[start:], data)
	}
	*bp = buf
	return len(batch), nil
}

// wireOf returns the bytes of f as they go to this connection: compressed where it
// negotiated permessage-deflate (and f is worth compressing), else as f was made.
func (c *Conn) wireOf(f *wire.Frame) []byte {
	return wire.Encoding{Deflate: c.deflate}.Bytes(f)
}

// sendClose sends a close frame and half-closes the socket; the read pump then ends on
// the peer's close frame, or after closeGrace.
func (c *Conn) sendClose(code int, text string) {
	err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text),
		time.Now().Add(c.srv.cfg.WriteTimeout))
	if err != nil {
		c.log.Debug("close frame not sent", "code", code, "err", err)
	}
	c.nc.closeWrite()
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
		case c.closing():
			// read until the peer's close frame or the grace deadline
		case err != nil:
			c.srv.metrics.LimitHit(metrics.LimitFrameSize)
			c.requestClose(websocket.CloseMessageTooBig, "message too big once decompressed", false)
		case mt == websocket.BinaryMessage:
			c.requestClose(websocket.CloseUnsupportedData, "binary frames are not supported", false)
		case !utf8.Valid(data):
			c.requestClose(websocket.CloseInvalidFramePayloadData, "text frame is not valid UTF-8", false)
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
		c.panicked(v)
		c.finish()
	}
}

// panicked logs and counts a recovered panic and asks for a close with 1011.
func (c *Conn) panicked(v any) {
	c.srv.metrics.Panicked()
	c.log.Error("panic while serving a connection; closing it", "panic", v, "stack", string(debug.Stack()))
	c.mu.Lock()
	if c.closeCode == 0 {
		c.closeCode, c.closeText = websocket.CloseInternalServerErr, "internal error"
	}
	c.mu.Unlock()
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
	if err != nil && !errors.Is(err, websocket.ErrCloseSent) && !errors.Is(err, errCloseSent) {
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
		c.mu.Lock()
		latest := c.pingSeq
		c.mu.Unlock()
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
	if !c.closing() {
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
	c.mu.Lock()
	dropped := 0
	if c.closeCode == 0 {
		c.closeCode = code
		dropped = len(c.queue)
		c.clearQueue()
	}
	c.mu.Unlock()
	c.srv.metrics.Dropped(metrics.DropClosed, dropped)
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
	c.nc.closeWrite()
	_ = c.nc.SetReadDeadline(time.Now().Add(closeGrace))
	_, _ = io.CopyN(io.Discard, c.nc.Conn, maxDrain)
}

// finish ends the connection, once; see end.
func (c *Conn) finish() { c.once.Do(c.end) }

// end ends the connection: it leaves the hub, drops whatever is still queued, stops the
// pings, closes the socket (which ends a writer in the middle of a write) and lets
// Shutdown know. Called once, by the read pump.
func (c *Conn) end() {
	c.srv.hub.leave(c)
	c.mu.Lock()
	code, dropped := c.closeCode, len(c.queue)
	c.clearQueue()
	c.finished = true
	c.mu.Unlock()
	if dropped > 0 {
		c.srv.metrics.Dropped(metrics.DropClosed, dropped)
	}
	close(c.done)
	c.ping.Stop()
	_ = c.nc.Close() // a writer in the middle of a write fails now
	c.writers.Wait() // and ends
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
			c.enqueue(wire.Reply(replyFrame{Op: "subscribed", Channel: ch, Ref: r.Ref, Presence: watch}))
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
			c.enqueue(wire.Reply(replyFrame{Op: "unsubscribed", Channel: ch, Ref: r.Ref}))
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
	c.enqueue(wire.Reply(replyFrame{Op: "ack", Ref: r.Ref, ID: id}))
}

func (c *Conn) replyError(code, msg, ref string) {
	c.srv.metrics.ClientError(code)
	c.enqueue(wire.Reply(errorFrame{Op: "error", Code: code, Message: msg, Ref: ref}))
}

// isInvalid reports whether a publish failed because the message itself is invalid.
func isInvalid(err error) bool {
	return errors.Is(err, message.ErrBadChannel) || errors.Is(err, message.ErrNoData) ||
		errors.Is(err, message.ErrBadData) || errors.Is(err, message.ErrBadUser) || errors.Is(err, message.ErrBadID)
}
