package writer

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/wire"
)

// batchFlushBytes is where a writer sends a batch and starts the next one, so a long
// queue goes out in writes of bounded size.
const batchFlushBytes = 64 << 10

// maxSpare bounds the slice a queue keeps between batches, so that an idle connection
// does not hold a large one after a burst.
const maxSpare = 64

// Queue is one connection's byte-capped write queue and the state of its writer: the
// frames waiting, the close asked for, the ping due, and who writes (see the package
// comment). A connection holds one Queue (by value: Init readies it) and is its Owner.
// Its methods are safe for concurrent use; mu protects every field below it.
type Queue struct {
	w     *Writer
	sock  *Socket
	enc   wire.Encoding // how frames go to this connection; set by Init
	owner Owner
	room  chan struct{} // room for one signal from the writer: it wrote a batch
	done  chan struct{} // closed by Finish

	mu     sync.Mutex
	skip   int64 // frames of messages at or below this offset were replayed: drop them
	frames []*wire.Frame
	queued int // bytes in frames
	// inflight and inflightBytes are the frames and bytes the writer has taken from the
	// queue and is writing now: still waiting, for the queue depth gauges.
	inflight, inflightBytes int
	closeCode               int    // 0 while open; the close code once a close is asked for
	closeText               string // the close frame's reason
	// writers counts the writer, for Finish to wait for; it is added to only under mu,
	// before finished.
	writers     sync.WaitGroup
	flushedTick int64         // the tick of q's last write (see flusher)
	spare       []*wire.Frame // the last batch's slice, reused for the next queue
	pingSeq     uint32        // the number of the latest ping asked for (1 and up)
	flushFirst  bool          // send what is queued before the close frame
	pingDue     bool          // the writer should send a ping
	// writing is true while q has a writer (a worker's turn, queued or under way, or a
	// writeLoop goroutine), and for good once the writing side is closed (close frame
	// sent, or a write failed): at most one writer is ever at work. finished is set by
	// Finish: no writer starts after it.
	writing  bool
	finished bool
	// scheduled is true while q waits in the flusher for the next tick.
	scheduled  bool
	roomWanted bool // a replay waits for the writer to make room
	// replayed is the newest offset EnqueueReplay or EnqueueHistory queued: a frame at or
	// below it is a replayed one (read from the log, or a live frame shared from the tail
	// in memory), whose age is not a delivery latency.
	replayed atomic.Int64
}

// Init readies q to write to sock, in the encoding enc, for owner: call it once, before
// anything is queued.
func (q *Queue) Init(w *Writer, sock *Socket, enc wire.Encoding, owner Owner) {
	q.w, q.sock, q.enc, q.owner = w, sock, enc, owner
	q.room = make(chan struct{}, 1)
	q.done = make(chan struct{})
	q.skip = math.MinInt64 // nothing replayed: skip nothing
	q.replayed.Store(math.MinInt64)
}

// InitUnwritten readies q with no socket, as a queue whose writer never starts: frames
// stay queued until Clear. For the benchmarks of fan-out, which measure the cost of
// queueing alone.
func (q *Queue) InitUnwritten(w *Writer, owner Owner) {
	q.Init(w, nil, wire.Encoding{}, owner)
	q.writing = true
}

// Clear drops what q has queued, uncounted, as a writer that took it would.
func (q *Queue) Clear() {
	q.mu.Lock()
	q.clear()
	q.mu.Unlock()
}

// Done is closed once the connection is finished (Finish).
func (q *Queue) Done() <-chan struct{} { return q.done }

// SkipThrough makes q drop frames of messages at or below offset: the ones a replay has
// already given the connection.
func (q *Queue) SkipThrough(offset int64) {
	q.mu.Lock()
	q.skip = offset
	q.mu.Unlock()
}

// Enqueue adds f to the queue without blocking. If that would take the queue over its
// byte cap, the connection is closed as a slow consumer (4008) instead, and what it had
// queued is dropped: the client resumes from its last offset when it reconnects. A frame
// the connection cannot take (it is closing) is dropped and counted.
func (q *Queue) Enqueue(f *wire.Frame) { q.enqueue(f, false) }

// EnqueueHistory is Enqueue for a frame of a channel's history (a message the gateway
// held, sent on subscribe): it is queued whatever SkipThrough said, and its age is not a
// delivery latency.
func (q *Queue) EnqueueHistory(f *wire.Frame) { q.enqueue(f, true) }

func (q *Queue) enqueue(f *wire.Frame, history bool) {
	q.mu.Lock()
	if history {
		if f.Offset > q.replayed.Load() {
			q.replayed.Store(f.Offset)
		}
	} else if f.Offset >= 0 && f.Offset <= q.skip {
		q.mu.Unlock() // a replay has given it already
		return
	}
	if q.closeCode != 0 {
		q.mu.Unlock()
		q.w.metrics.Dropped(metrics.DropClosed, 1)
		return
	}
	if q.queued+f.Size() > q.w.queueBytes {
		dropped := len(q.frames) + 1
		q.closeCode, q.closeText, q.flushFirst = wire.CloseSlowConsumer, "slow consumer: write queue full", false
		q.clear()
		q.startWriter()
		q.mu.Unlock()
		q.w.metrics.Dropped(metrics.DropSlowConsumer, dropped)
		q.w.metrics.SlowConsumer()
		q.owner.Overflowed(dropped)
		return
	}
	q.frames = append(q.frames, f)
	q.queued += f.Size()
	q.startWriter()
	q.mu.Unlock()
}

// EnqueueReplay queues a replayed frame, waiting while the queue is over half its cap so
// that a long replay goes at the client's pace, within the cap. While it waits, it calls
// waiting every interval (the connection's transport keeps its read deadline moving: the
// read pump may be the one replaying). It reports false when the connection closed first.
// Called by the goroutine that replays, never by fan-out.
func (q *Queue) EnqueueReplay(f *wire.Frame, interval time.Duration, waiting func()) bool {
	for {
		q.mu.Lock()
		if q.closeCode != 0 {
			q.mu.Unlock()
			return false
		}
		if q.queued == 0 || q.queued+f.Size() <= q.w.queueBytes/2 {
			if f.Offset > q.replayed.Load() {
				q.replayed.Store(f.Offset)
			}
			q.frames = append(q.frames, f)
			q.queued += f.Size()
			q.startWriter()
			q.mu.Unlock()
			return true
		}
		q.roomWanted = true
		q.mu.Unlock()
		select {
		case <-q.room:
		case <-q.done:
			return false
		case <-time.After(interval):
			waiting()
		}
	}
}

// startWriter makes a writer for q if none is at work and there is something to write: a
// turn at a writer worker, or a writeLoop goroutine for a close (or where the Writer has
// no workers). For frames of a connection that has written in the current tick, it has
// the flusher do so at the next tick instead. q.mu must be held.
func (q *Queue) startWriter() {
	urgent := q.pingDue || q.closeCode != 0
	if q.writing || q.finished || (q.scheduled && !urgent) || (len(q.frames) == 0 && !urgent) {
		return
	}
	if f := q.w.flusher; !urgent && f != nil && q.flushedTick == f.tick.Load() {
		q.scheduled = true
		f.schedule(q)
		return
	}
	q.writing = true
	q.writers.Add(1)
	if p := q.w.pool; p != nil && q.closeCode == 0 && q.sock.direct {
		p.submit(q)
		return
	}
	go q.writeLoop(nil)
}

// clear empties the queue. q.mu must be held.
func (q *Queue) clear() {
	clear(q.frames)
	q.frames = q.frames[:0]
	q.queued = 0
}

// Depth returns the number of frames and bytes waiting to be written: in the queue, and
// in the batch being written.
func (q *Queue) Depth() (frames, bytes int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.frames) + q.inflight, q.queued + q.inflightBytes
}

// RequestClose asks the writer to close the connection with code; the first request
// wins. With flush, what is queued is sent before the close; without, it is dropped.
func (q *Queue) RequestClose(code int, text string, flush bool) {
	q.mu.Lock()
	if q.closeCode != 0 {
		q.mu.Unlock()
		return
	}
	q.closeCode, q.closeText, q.flushFirst = code, text, flush
	dropped := 0
	if !flush {
		dropped = len(q.frames)
		q.clear()
	}
	q.startWriter()
	q.mu.Unlock()
	if dropped > 0 {
		q.w.metrics.Dropped(metrics.DropClosed, dropped)
	}
}

// Abort marks the connection closing with code (unless a close was asked for already),
// without a close frame: the connection is ending another way (its reading ended, or a
// panic). What is queued is dropped.
func (q *Queue) Abort(code int, text string) {
	q.mu.Lock()
	dropped := 0
	if q.closeCode == 0 {
		q.closeCode, q.closeText = code, text
		dropped = len(q.frames)
		q.clear()
	}
	q.mu.Unlock()
	q.w.metrics.Dropped(metrics.DropClosed, dropped)
}

// Closing reports whether a close was asked for, or the connection is ending.
func (q *Queue) Closing() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closeCode != 0
}

// Ping asks the writer for a ping, numbered one more than the last.
func (q *Queue) Ping() {
	q.mu.Lock()
	q.pingDue = true
	if q.pingSeq++; q.pingSeq == 0 { // 0 means no ping (writeTask)
		q.pingSeq = 1
	}
	q.startWriter()
	q.mu.Unlock()
}

// State describes the queue and its writer, for a failing test's log.
func (q *Queue) State() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	tick := int64(0)
	if q.w.flusher != nil {
		tick = q.w.flusher.tick.Load()
	}
	return fmt.Sprintf("writing=%v scheduled=%v closeCode=%d frames=%d queued=%d roomWanted=%v room=%d flushedTick=%d tick=%d",
		q.writing, q.scheduled, q.closeCode, len(q.frames), q.queued, q.roomWanted, len(q.room), q.flushedTick, tick)
}

// LatestPing returns the number of the latest ping asked for; 0 before the first.
func (q *Queue) LatestPing() uint32 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pingSeq
}

// Finish ends the queue for good, once the connection is done: what is still queued is
// dropped, no writer starts after, Done is closed, and the socket is closed (which ends a
// writer in the middle of a write), then it waits for the writer to end. It returns the
// code the connection closed with.
func (q *Queue) Finish() (code int) {
	q.mu.Lock()
	code, dropped := q.closeCode, len(q.frames)
	q.clear()
	q.finished = true
	q.mu.Unlock()
	if dropped > 0 {
		q.w.metrics.Dropped(metrics.DropClosed, dropped)
	}
	close(q.done)
	if q.sock != nil {
		_ = q.sock.Close() // a writer in the middle of a write fails now
	}
	q.writers.Wait() // and ends
	return code
}

// writeLoop is the connection's writer on a goroutine of its own, for what a worker
// (writeTurn) does not do: it completes first, a turn a worker began (the rest of a write
// the socket did not take at once), then writes what is queued, everything queued in one
// write within the deadline, and the pings and the close frame, until there is nothing
// left to write; then it ends. See the package comment for how it comes to be q's only
// writer.
func (q *Queue) writeLoop(first *writeTask) {
	defer q.writers.Done()
	defer q.recoverWriter(nil)
	again := false // this goroutine has written in the current tick
	if first != nil {
		var err error
		unsent := 0
		if first.partial {
			rest := first.frames[len(first.frames)-first.restFrames:]
			if err = q.sock.Flush(); err == nil {
				q.wroteFrames(rest, first.restData, nil)
			} else {
				unsent = len(rest)
			}
		} else {
			sent := 0
			sent, err = q.writeBatch(first.frames, first.ping)
			unsent = len(first.frames) - sent
		}
		q.finishTurn(*first, err, unsent, false)
		if err != nil {
			return // writing stays true: no writer starts again
		}
		again = true
	}
	for {
		q.mu.Lock()
		t, ok := q.takeBatch(again)
		q.mu.Unlock()
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
			sent, err = q.writeBatch(t.frames, ping)
		}
		q.finishTurn(t, err, len(t.frames)-sent, false)
		if err != nil {
			return // writing stays true: no writer starts again
		}
		if t.code != 0 {
			q.owner.SendClose(t.code, t.text)
			return
		}
	}
}

// recoverWriter, deferred by a writer, turns a panic there into the end of this
// connection only: the owner is told (it counts and logs it), the connection is marked
// closing with 1011 and its socket closed, so that the read pump ends and finishes it; a
// worker goes on with the other connections. owned, when not nil, says whether the
// panicking writer still held q (a worker's turn), whose count it then gives back.
func (q *Queue) recoverWriter(owned *bool) {
	v := recover()
	if v == nil {
		return
	}
	q.owner.Panicked(v)
	q.Abort(wire.CloseInternalError, "internal error")
	_ = q.sock.Close() // the read pump ends and finishes the connection
	if owned != nil && *owned {
		q.writers.Done()
	}
}

// writeBatch writes frames, and after them the ping numbered ping unless it is 0, to the
// socket: their bytes go into one pooled buffer, written in one call, or in calls of
// about batchFlushBytes for a long queue. It returns how many frames were written.
func (q *Queue) writeBatch(batch []*wire.Frame, ping uint32) (int, error) {
	bp := batchBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooledBatch {
			*bp = (*bp)[:0]
			batchBufs.Put(bp)
		}
	}()
	buf, start := (*bp)[:0], 0
	for i, f := range batch {
		buf = append(buf, q.enc.Bytes(f)...)
		if len(buf) >= batchFlushBytes && i < len(batch)-1 {
			if _, err := q.sock.Write(buf); err != nil {
				return start, err
			}
			q.wroteFrames(batch[start:i+1], len(buf), nil)
			buf, start = buf[:0], i+1
		}
	}
	data := len(buf)
	if ping != 0 {
		buf = q.enc.AppendPing(buf, ping)
	}
	if len(buf) > 0 {
		if _, err := q.sock.Write(buf); err != nil {
			return start, err
		}
		q.wroteFrames(batch[start:], data, nil)
	}
	*bp = buf
	return len(batch), nil
}

// takeBatch takes what q's writer is to write now: the queued frames, whether a ping is
// due, and, once the connection is closing, the close frame's code and text (flush: send
// the frames first). It reports false when there is nothing to write now, or this tick's
// write is done (the rest waits for the next tick): the caller, then, is no longer the
// writer. q.mu must be held.
func (q *Queue) takeBatch(again bool) (t writeTask, ok bool) {
	q.inflight, q.inflightBytes = 0, 0
	t.code, t.text, t.flush = q.closeCode, q.closeText, q.flushFirst
	if q.pingDue {
		t.ping = q.pingSeq
	}
	urgent := t.ping != 0 || t.code != 0
	tick := int64(0)
	if q.w.flusher != nil {
		tick = q.w.flusher.tick.Load()
	}
	if !urgent && (len(q.frames) == 0 || (again && q.flushedTick == tick)) {
		q.writing = false
		q.startWriter()
		return t, false
	}
	t.frames = q.frames
	q.inflight, q.inflightBytes = len(t.frames), q.queued
	q.frames, q.queued, q.spare = q.spare[:0], 0, nil
	q.pingDue, q.flushedTick = false, tick
	t.room = q.roomWanted
	q.roomWanted = false
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
	// (Socket.pending), for writeLoop to flush: the last restFrames of frames, restData
	// bytes of theirs, and the ping. Else the worker wrote nothing, and writeLoop writes
	// frames and the ping.
	partial    bool
	restFrames int
	restData   int
}

// writeTurn is a worker's turn at q: it writes what q has queued in one non-blocking
// write, built in buf (the worker's buffer, returned for reuse), counts it in tally (the
// worker's, flushed by the worker), then hands q to the flusher or a worker again if more
// is queued. A close frame to send, a queue longer than
// one batch, or a socket that did not take the whole write hands q to a writeLoop
// goroutine instead, which may wait for the socket.
func (q *Queue) writeTurn(buf []byte, tally *metrics.Tally) []byte {
	owned := true // this turn is q's writer, until it hands over or ends
	defer q.recoverWriter(&owned)
	q.mu.Lock()
	if q.closeCode != 0 {
		// Sending the close frame may wait: that is a goroutine's job, and so is
		// everything after it. The writer's ownership passes to it.
		q.mu.Unlock()
		owned = false
		go q.writeLoop(nil)
		return buf
	}
	t, ok := q.takeBatch(false)
	q.mu.Unlock()
	if !ok {
		owned = false
		q.writers.Done()
		return buf
	}
	if q.inflightBytes > batchFlushBytes {
		// A backlog: writeLoop writes it in batches, waiting for the socket.
		owned = false
		q.handOver(t)
		return buf
	}
	buf, data := q.appendBatch(buf, t.frames, t.ping)
	n, err := q.sock.TryWrite(buf)
	unwritten := q.framesAfter(t.frames, n)
	q.wroteFrames(t.frames[:len(t.frames)-unwritten], min(n, data), tally)
	if err == nil && n < len(buf) {
		// The socket took part (or none) of it, and keeps the rest: a goroutine flushes
		// it, waiting for the socket, and goes on as q's writer.
		t.partial, t.restFrames, t.restData = true, unwritten, data-min(n, data)
		owned = false
		q.handOver(t)
		return buf
	}
	q.finishTurn(t, err, unwritten, true)
	owned = false
	q.writers.Done()
	return buf
}

// handOver starts a writeLoop goroutine that completes t and goes on as q's writer. (A
// function of its own, so that only a turn handed over is moved to the heap.)
func (q *Queue) handOver(t writeTask) {
	go q.writeLoop(&t)
}

// appendBatch appends the frames, and the ping numbered ping unless it is 0, to buf, and
// returns it with the bytes of the frames alone.
func (q *Queue) appendBatch(buf []byte, frames []*wire.Frame, ping uint32) ([]byte, int) {
	for _, f := range frames {
		buf = append(buf, q.enc.Bytes(f)...)
	}
	n := len(buf)
	if ping != 0 {
		buf = q.enc.AppendPing(buf, ping)
	}
	return buf, n
}

// framesAfter returns how many of frames, at their end, are not whole within the first
// n bytes written of them (n may run on into a ping after them).
func (q *Queue) framesAfter(frames []*wire.Frame, n int) int {
	for i, f := range frames {
		w := len(q.enc.Bytes(f))
		if n < w {
			return len(frames) - i
		}
		n -= w
	}
	return 0
}

// wroteFrames counts frames written whole to the socket, n bytes of them: the messages
// among them as delivered, with their delivery latency (a replayed message's age is not
// one), and notes the live deliveries on the traces of traced messages (wire.Trace). It
// counts them in tally, which its writer flushes later (a worker's, at the end of its
// pass), or, where tally is nil (a writeLoop goroutine), into the metrics at once.
func (q *Queue) wroteFrames(frames []*wire.Frame, n int, tally *metrics.Tally) {
	m := q.w.metrics
	if m == nil || len(frames) == 0 && n == 0 {
		return
	}
	var own metrics.Tally
	if tally == nil {
		tally = &own
	}
	now := time.Now()
	delivered := 0
	replayed := q.replayed.Load()
	for _, f := range frames {
		if !f.Published.IsZero() {
			delivered++
			if f.Offset > replayed { // a live delivery
				tally.DeliveryLatency(now.Sub(f.Published))
				if f.Trace != nil {
					f.Trace.Wrote(now)
				}
			}
		}
	}
	t := metrics.TransportWS
	if q.enc.Events {
		t = metrics.TransportSSE
	}
	tally.Wrote(n, delivered, t)
	if tally == &own {
		m.Flush(&own)
	}
}

// finishTurn ends a writer's turn: it keeps the batch's slice for the next queue, wakes a
// replay that waits for room, and, with last (a worker's turn), gives up being q's writer,
// making a new one if more is queued. After a failed write (unsent of the frames not
// written), it marks the connection closing and closes the socket, so that the read pump
// ends and finishes it; writing then stays true, so no writer starts again.
func (q *Queue) finishTurn(t writeTask, err error, unsent int, last bool) {
	if t.room {
		signal(q.room)
	}
	clear(t.frames)
	q.mu.Lock()
	q.inflight, q.inflightBytes = 0, 0
	if cap(t.frames) <= maxSpare && q.spare == nil {
		q.spare = t.frames[:0]
	}
	if err != nil && q.closeCode == 0 { // nothing more can be written: stop queueing and replaying
		q.closeCode = wire.CloseAbnormal
	}
	if last && err == nil {
		q.writing = false
		q.startWriter()
	}
	q.mu.Unlock()
	if err != nil {
		q.owner.WriteFailed(err)
		q.w.metrics.Dropped(metrics.DropWriteFailed, unsent)
		_ = q.sock.Close()
	}
}
