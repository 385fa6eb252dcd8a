package gateway

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/wire"
)

// writerPool is a fixed set of writer workers (by default one per core but one) that write the
// connections' queued frames. A connection with something to write is handed to one of
// them (round robin, so that one message's fan-out is spread over every worker); the
// worker takes its queue and writes it in one non-blocking write. A socket that cannot
// take the whole write at once keeps the rest (batchConn.pending), and the connection
// goes to a goroutine of its own (Conn.writeLoop) that waits for the socket; that
// goroutine also sends close frames. A worker so never waits on one client, and the
// common case (the socket takes the write) costs no goroutine. Connections without raw
// socket access (TLS) always get the goroutine.
type writerPool struct {
	workers []*writeWorker
	next    atomic.Uint32
	wg      sync.WaitGroup
	stop    chan struct{}
}

// writeWorker is one worker's queue of ready connections.
type writeWorker struct {
	// mu protects ready: connections waiting for this worker, each owned by it (its
	// writing flag set) until the worker is done with it.
	mu    sync.Mutex
	ready []*Conn
	wake  chan struct{} // room for one signal: there is something in ready
}

func newWriterPool(n int) *writerPool {
	p := &writerPool{workers: make([]*writeWorker, n), stop: make(chan struct{})}
	for i := range p.workers {
		w := &writeWorker{wake: make(chan struct{}, 1)}
		p.workers[i] = w
		p.wg.Go(func() { w.run(p.stop) })
	}
	return p
}

// submit hands c, whose writing flag the caller has just set, to a worker. It never
// blocks. The caller holds c.mu.
func (p *writerPool) submit(c *Conn) {
	w := p.workers[p.next.Add(1)%uint32(len(p.workers))]
	w.mu.Lock()
	w.ready = append(w.ready, c)
	first := len(w.ready) == 1
	w.mu.Unlock()
	if first {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// run writes the connections handed to w until stop is closed.
func (w *writeWorker) run(stop <-chan struct{}) {
	var batch []*Conn
	var buf []byte // the worker's write buffer, reused for every connection
	for {
		w.mu.Lock()
		batch, w.ready = w.ready, batch[:0]
		w.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-w.wake:
				continue
			case <-stop:
				return
			}
		}
		for i, c := range batch {
			buf = c.writeTurn(buf[:0])
			batch[i] = nil
		}
		if cap(buf) > maxPooledBatch {
			buf = nil
		}
	}
}

// close stops the workers. Connections still waiting are not written to (Shutdown calls
// it once every connection is finished).
func (p *writerPool) close() {
	close(p.stop)
	p.wg.Wait()
}

// takeBatch takes what c's writer is to write now: the queued frames, whether a ping is
// due, and, once the connection is closing, the close frame's code and text (flush: send
// the frames first). It reports false when there is nothing to write now, or this tick's
// write is done (the rest waits for the next tick): the caller, then, is no longer the
// writer. c.mu must be held.
func (c *Conn) takeBatch(again bool) (t writeTask, ok bool) {
	c.inflight, c.inflightBytes = 0, 0
	t.code, t.text, t.flush = c.closeCode, c.closeText, c.flushFirst
	if c.pingDue {
		t.ping = c.pingSeq
	}
	urgent := t.ping != 0 || t.code != 0
	tick := int64(0)
	if c.srv.flusher != nil {
		tick = c.srv.flusher.tick.Load()
	}
	if !urgent && (len(c.queue) == 0 || (again && c.flushedTick == tick)) {
		c.writing = false
		c.startWriter()
		return t, false
	}
	t.frames = c.queue
	c.inflight, c.inflightBytes = len(t.frames), c.queued
	c.queue, c.queued, c.spare = c.spare[:0], 0, nil
	c.pingDue, c.flushedTick = false, tick
	t.room = c.roomWanted
	c.roomWanted = false
	return t, true
}

// writeTask is one turn of a connection's writer: see takeBatch.
type writeTask struct {
	frames []*wire.Frame
	ping   uint32 // the number of the ping to send after the frames; 0: none
	code   int
	text   string
	flush  bool
	room   bool // a replay waits for room: signal it after the write
	// partial says that a worker's write left the rest of this turn with the socket
	// connection (batchConn.pending), for writeLoop to flush: the last restFrames of
	// frames, restData bytes of theirs, and the ping. Else the worker wrote nothing, and
	// writeLoop writes frames and the ping.
	partial    bool
	restFrames int
	restData   int
}

// writeTurn is a worker's turn at c: it writes what c has queued in one non-blocking
// write, built in buf (the worker's buffer, returned for reuse), then hands c to the
// flusher or a worker again if more is queued. A close frame to send, a queue longer than
// one batch, or a socket that did not take the whole write hands c to a writeLoop
// goroutine instead, which may wait for the socket.
func (c *Conn) writeTurn(buf []byte) []byte {
	owned := true // this turn is c's writer, until it hands over or ends
	defer func() {
		if v := recover(); v != nil { // that connection ends (1011); the worker goes on
			c.panicked(v)
			_ = c.nc.Close() // the read pump ends and finishes the connection
			if owned {
				c.writers.Done()
			}
		}
	}()
	c.mu.Lock()
	if c.closeCode != 0 {
		// Sending the close frame may wait: that is a goroutine's job, and so is
		// everything after it. The writer's ownership passes to it.
		c.mu.Unlock()
		owned = false
		go c.writeLoop(nil)
		return buf
	}
	t, ok := c.takeBatch(false)
	c.mu.Unlock()
	if !ok {
		owned = false
		c.writers.Done()
		return buf
	}
	if c.inflightBytes > batchFlushBytes {
		// A backlog: writeLoop writes it in batches, waiting for the socket.
		owned = false
		c.handOver(t)
		return buf
	}
	buf, data := c.appendBatch(buf, t.frames, t.ping)
	n, err := c.nc.tryWrite(buf)
	unwritten := c.framesAfter(t.frames, n)
	c.wroteFrames(t.frames[:len(t.frames)-unwritten], min(n, data))
	if err == nil && n < len(buf) {
		// The socket took part (or none) of it, and keeps the rest: a goroutine flushes
		// it, waiting for the socket, and goes on as c's writer.
		t.partial, t.restFrames, t.restData = true, unwritten, data-min(n, data)
		owned = false
		c.handOver(t)
		return buf
	}
	c.finishTurn(t, err, unwritten, true)
	owned = false
	c.writers.Done()
	return buf
}

// handOver starts a writeLoop goroutine that completes t and goes on as c's writer. (A
// function of its own, so that only a turn handed over is moved to the heap.)
func (c *Conn) handOver(t writeTask) {
	go c.writeLoop(&t)
}

// appendBatch appends the frames, and the ping numbered ping unless it is 0, to buf, and
// returns it with the bytes of the frames alone.
func (c *Conn) appendBatch(buf []byte, frames []*wire.Frame, ping uint32) ([]byte, int) {
	for _, f := range frames {
		buf = append(buf, c.wireOf(f)...)
	}
	n := len(buf)
	if ping != 0 {
		buf = wire.AppendPing(buf, ping)
	}
	return buf, n
}

// framesAfter returns how many of frames, at their end, are not whole within the first
// n bytes written of them (n may run on into a ping after them).
func (c *Conn) framesAfter(frames []*wire.Frame, n int) int {
	for i, f := range frames {
		w := len(c.wireOf(f))
		if n < w {
			return len(frames) - i
		}
		n -= w
	}
	return 0
}

// wroteFrames counts frames written whole to the socket, n bytes of them: the messages
// among them as delivered, with their delivery latency (a replayed message's age is not
// one).
func (c *Conn) wroteFrames(frames []*wire.Frame, n int) {
	m := c.srv.metrics
	if m == nil || len(frames) == 0 && n == 0 {
		return
	}
	now := time.Now()
	delivered := 0
	for _, f := range frames {
		if !f.Published.IsZero() {
			delivered++
			if !f.Replayed {
				m.DeliveryLatency(now.Sub(f.Published))
			}
		}
	}
	m.Wrote(n, delivered)
}

// finishTurn ends a writer's turn: it keeps the batch's slice for the next queue, wakes a
// replay that waits for room, and, with last (a worker's turn), gives up being c's writer,
// making a new one if more is queued. After a failed write (unsent of the frames not
// written), it marks the connection closing and closes the socket, so that the read pump
// ends and finishes it; writing then stays true, so no writer starts again.
func (c *Conn) finishTurn(t writeTask, err error, unsent int, last bool) {
	if t.room {
		select {
		case c.room <- struct{}{}:
		default:
		}
	}
	clear(t.frames)
	c.mu.Lock()
	c.inflight, c.inflightBytes = 0, 0
	if cap(t.frames) <= maxSpare && c.spare == nil {
		c.spare = t.frames[:0]
	}
	if err != nil && c.closeCode == 0 { // nothing more can be written: stop queueing and replaying
		c.closeCode = websocket.CloseAbnormalClosure
	}
	if last && err == nil {
		c.writing = false
		c.startWriter()
	}
	c.mu.Unlock()
	if err != nil {
		c.log.Debug("write failed", "err", err)
		c.srv.metrics.Dropped(metrics.DropWriteFailed, unsent)
		_ = c.nc.Close()
	}
}
