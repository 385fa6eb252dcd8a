// Package writer is the gateway's write path: each connection's byte-capped queue
// (Queue), the writer workers and the hand-over goroutine that write it, the flusher that
// coalesces a busy connection's writes, and the writes to the socket (Socket). It knows
// nothing of sessions, hubs or protocols: it writes frames (package wire) and reports
// what it cannot deal with to the connection that owns the queue (Owner).
//
// # One writer at a time per connection
//
// Everything a connection sends to its client goes through its Queue. Enqueue (fan-out
// and replies) and EnqueueReplay queue frames, never block on the socket and never write;
// RequestClose and Ping only ask for a close frame or a ping. Whoever queues or asks
// makes a writer if none is at work (Queue.startWriter, under the queue's lock): a turn at
// one of the Writer's workers where the socket takes non-blocking writes (Socket.Direct),
// else a goroutine of its own (writeLoop), which may wait for the socket. The queue's
// writing flag, under its lock, is that writer's ownership of the socket's data: it is
// set when a writer is made and cleared only by that writer, when it finds nothing more
// to write, so at most one writer is at work at any time.
//
// Ownership passes; it is never shared. A worker's turn (writeTurn) writes what is queued
// in one non-blocking write and gives ownership back. Where it cannot finish (the socket
// took part of the write and keeps the rest, the queue holds more than one batch, or a
// close frame is due, which may wait), it hands the rest to a new writeLoop goroutine
// (handOver) and returns without touching the connection again: that goroutine is the
// writer from then on, until the queue is empty, when it gives ownership back and ends;
// the next frame makes a new writer. After the close frame, and after a failed write,
// writing stays set for good, so no writer starts again; Finish waits for the last one.
//
// The only other writes to a socket are the WebSocket library's control frames: pongs and
// the close frame that answers the client's, from the read pump, and the close frame the
// writer has the transport send (Owner.SendClose). Socket serialises them with the
// writer's batches under its lock, whole frames between whole frames, and lets nothing
// follow a close frame.
package writer

import (
	"sync"
	"time"

	"github.com/heraldgw/herald/gateway/internal/metrics"
)

// Config configures a Writer.
type Config struct {
	// QueueBytes caps each connection's queue: a frame that would take it over closes the
	// connection with 4008. Must be positive.
	QueueBytes int
	// FlushInterval is how often a busy connection writes (see flusher); zero or negative:
	// every frame at once.
	FlushInterval time.Duration
	// Workers is how many writer workers write the queues; zero or negative: every write
	// gets a goroutine of its own.
	Workers int
	// SpreadAfter is the spread policy's target (see pool): the first worker writes every
	// queue alone while its backlog takes it less than this to write, and shares a backlog
	// that would take longer with the other workers. Zero or negative: every backlog is
	// shared.
	SpreadAfter time.Duration
	// Metrics counts writes, deliveries and drops. Default: counted nowhere.
	Metrics *metrics.Metrics
}

// Writer is the write side the connections of a server share: the writer workers, the
// flusher and the cap of each queue. Its fields are set by New and not changed after.
type Writer struct {
	queueBytes int
	metrics    *metrics.Metrics
	pool       *pool    // nil when Workers is zero or negative
	flusher    *flusher // nil when FlushInterval is zero or negative
	stop       sync.Once
}

// New starts the workers and the flusher cfg asks for; Close stops them.
func New(cfg Config) *Writer {
	w := &Writer{queueBytes: cfg.QueueBytes, metrics: cfg.Metrics}
	if cfg.FlushInterval > 0 {
		w.flusher = newFlusher(cfg.FlushInterval)
	}
	if cfg.Workers > 0 {
		w.pool = newPool(cfg.Workers, cfg.SpreadAfter, cfg.Metrics)
	}
	return w
}

// Close stops the workers and the flusher, once. Queues still waiting for them are not
// written to: call it once every connection is finished.
func (w *Writer) Close() {
	w.stop.Do(func() {
		if w.flusher != nil {
			w.flusher.close()
		}
		if w.pool != nil {
			w.pool.close()
		}
	})
}

// QueueBytes is the cap of each queue, in bytes.
func (w *Writer) QueueBytes() int { return w.queueBytes }

// Owner is the connection a Queue belongs to: its writer reports to it what the queue
// cannot deal with alone. Its methods are called without the queue's lock, from whichever
// goroutine is queueing or writing.
type Owner interface {
	// SendClose sends the transport's close, after everything queued before it (the
	// WebSocket close frame, then the socket's sending side shut): the last thing the
	// writer does. Called once, by the connection's writer.
	SendClose(code int, text string)
	// Overflowed is told that a frame would have taken the queue over its cap: the
	// connection is closing with 4008, without the dropped frames it had queued.
	Overflowed(dropped int)
	// Panicked is told of a panic recovered in the connection's writer; the writer then
	// closes the socket, and the connection closes with 1011.
	Panicked(v any)
	// WriteFailed is told that a write failed; the writer has closed the socket.
	WriteFailed(err error)
}

// pool is a fixed set of writer workers (by default one per core) that write the
// connections' queued frames. A connection with something to write joins the pool's
// ready list (one list, first in first out); a worker takes queues from its front a chunk
// at a time and writes each in one non-blocking write. A socket that cannot take the
// whole write at once keeps the rest (Socket.pending), and the connection goes to a
// goroutine of its own (writeLoop) that waits for the socket; that goroutine also sends
// close frames. A worker so never waits on one client, and the common case (the socket
// takes the write) costs no goroutine. Connections without raw socket access (TLS)
// always get the goroutine.
//
// # The spread policy
//
// One core writes while it keeps up; every core writes a deep backlog. The first worker,
// the home worker, is the one woken when the list gets its first queue. After taking each
// chunk it looks at the backlog left in the list: while that would take it at most
// spreadAfter to write alone (the backlog times its own time per write, measured in its
// thread's CPU time, so that a core shared with other work does not make a backlog look
// deeper; a backlog holds each connection once, so it is at most the connections), the
// other workers sleep, and no write pays for a second core's contention (a worker on each
// core preempts the read pumps and, on a small machine, the clients, and each write then
// costs more). A deeper backlog, such as one message's fan-out to ten thousand sockets,
// wakes as many other workers (helpers) as it has spreadAfters of work, up to all of them;
// each takes chunks from the same list until it is empty, then sleeps. So a wide fan-out
// is written from every core within a chunk of its start, in order, and a narrow one from
// one. spreadAfter zero wakes every helper whenever a chunk leaves a backlog.
type pool struct {
	home    *worker
	helpers []*worker
	// spreadAfter is the policy's target; perWrite is the home worker's time per write, a
	// moving average it alone keeps (learn).
	spreadAfter, perWrite time.Duration
	metrics               *metrics.Metrics

	// mu protects ready and head: ready[head:] are the queues waiting for a worker, each
	// owned by the pool (its writing flag set) until a worker has written it.
	mu    sync.Mutex
	ready []*Queue
	head  int

	wg   sync.WaitGroup
	stop chan struct{}
}

// worker is one writer worker: its wake signal and its buffers.
type worker struct {
	wake  chan struct{} // room for one signal: look at the ready list
	chunk []*Queue      // the queues taken, reused
}

// chunkSize is how many queues a worker takes from the ready list at a time: the home
// worker looks at the backlog between chunks, and a helper joins within one.
const chunkSize = 64

// initialPerWrite is the home worker's guess of its time per write until it has
// measured one: about what a small write to a loopback socket costs.
const initialPerWrite = 10 * time.Microsecond

// timeEvery is how often the home worker times a chunk (one in timeEvery of those long
// enough): a read of the thread's clock is a system call, 1.5-2 µs on the 2-core VM of
// BENCHMARKS.md (BenchmarkWorkClock), and the pace moves slowly.
const timeEvery = 4

// minMeasuredChunk is the shortest chunk whose time per write the home worker learns
// from: a chunk of a few writes measures mostly its own start.
const minMeasuredChunk = 16

func newPool(n int, spreadAfter time.Duration, m *metrics.Metrics) *pool {
	p := &pool{spreadAfter: max(spreadAfter, 0), perWrite: initialPerWrite, metrics: m, stop: make(chan struct{})}
	p.home = newWorker()
	p.wg.Go(p.runHome)
	for range n - 1 {
		h := newWorker()
		p.helpers = append(p.helpers, h)
		p.wg.Go(func() { p.runHelper(h) })
	}
	return p
}

func newWorker() *worker {
	return &worker{wake: make(chan struct{}, 1), chunk: make([]*Queue, 0, chunkSize)}
}

// submit adds q, whose writing flag the caller has just set, to the ready list, and
// wakes the home worker if the list was empty. It never blocks. The caller holds q.mu.
func (p *pool) submit(q *Queue) {
	p.mu.Lock()
	first := p.head == len(p.ready)
	p.ready = append(p.ready, q)
	p.mu.Unlock()
	if first {
		signal(p.home.wake)
	}
}

// signal puts a signal in c, a channel with room for one, unless one is waiting there
// already: it never blocks.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// take moves up to chunkSize queues from the front of the ready list into w.chunk and
// returns how many are left behind them.
func (p *pool) take(w *worker) (left int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := min(chunkSize, len(p.ready)-p.head)
	w.chunk = append(w.chunk[:0], p.ready[p.head:p.head+n]...)
	clear(p.ready[p.head : p.head+n])
	p.head += n
	switch {
	case p.head == len(p.ready):
		p.ready, p.head = p.ready[:0], 0
	case p.head >= 4096 && p.head > len(p.ready)/2:
		// A list that never empties: move what is left to the front, so it does not
		// grow for good.
		k := copy(p.ready, p.ready[p.head:])
		clear(p.ready[k:])
		p.ready, p.head = p.ready[:k], 0
	}
	return len(p.ready) - p.head
}

// helpersFor is how many helpers a backlog of left queues wakes: one for each
// spreadAfter of writing it holds at the home worker's pace, up to all of them.
func (p *pool) helpersFor(left int) int {
	if left == 0 || len(p.helpers) == 0 {
		return 0
	}
	work := time.Duration(left) * p.perWrite
	if work <= p.spreadAfter {
		return 0
	}
	if p.spreadAfter == 0 {
		return len(p.helpers)
	}
	return int(min(work/p.spreadAfter, time.Duration(len(p.helpers))))
}

// learn moves perWrite towards what a chunk of n writes that took took measured (the
// home worker's CPU time, workClock): a moving average over chunks, each weighing as much
// as its writes, up to a quarter. Chunks too short to tell are left out.
func (p *pool) learn(n int, took time.Duration) {
	if n >= minMeasuredChunk && took > 0 {
		p.perWrite += (took/time.Duration(n) - p.perWrite) * time.Duration(n) / (4 * chunkSize)
	}
}

// runHome is the home worker: it writes the ready list a chunk at a time, wakes helpers
// for a deep backlog, and learns its time per write. What it writes is counted in its
// tally and flushed into the metrics once per chunk (see metrics.Tally).
func (p *pool) runHome() {
	w := p.home
	var buf []byte // the worker's write buffer, reused for every connection
	var tally metrics.Tally
	var chunks uint // chunks taken, for timeEvery
	for {
		left := p.take(w)
		if len(w.chunk) == 0 {
			select {
			case <-w.wake:
				continue
			case <-p.stop:
				return
			}
		}
		if k := p.helpersFor(left); k > 0 {
			p.metrics.Spread(k)
			for _, h := range p.helpers[:k] {
				signal(h.wake)
			}
		}
		if chunks++; len(w.chunk) < minMeasuredChunk || chunks%timeEvery != 0 {
			buf = w.write(buf, &tally)
		} else {
			n, wall := len(w.chunk), time.Now()
			start, ok := workClock()
			buf = w.write(buf, &tally)
			// The goroutine may have moved to another thread during the chunk (it is
			// not locked to one): a reading that is not within the chunk's wall time
			// is another thread's, and left out.
			if end, ok2 := workClock(); ok && ok2 && end > start && end-start <= time.Since(wall) {
				p.learn(n, end-start)
			}
		}
		p.metrics.Flush(&tally)
	}
}

// runHelper is a helper: woken for a deep backlog, it writes the ready list a chunk at a
// time until it is empty, then sleeps.
func (p *pool) runHelper(w *worker) {
	var buf []byte
	var tally metrics.Tally
	for {
		select {
		case <-w.wake:
		case <-p.stop:
			return
		}
		for p.take(w); len(w.chunk) > 0; p.take(w) {
			p.metrics.Helped(len(w.chunk))
			buf = w.write(buf, &tally)
			p.metrics.Flush(&tally)
		}
	}
}

// write is a worker's turn at each queue of its chunk, in buf (its buffer, returned for
// reuse).
func (w *worker) write(buf []byte, tally *metrics.Tally) []byte {
	for i, q := range w.chunk {
		buf = q.writeTurn(buf[:0], tally)
		w.chunk[i] = nil
	}
	if cap(buf) > maxPooledBatch {
		buf = nil
	}
	return buf
}

// close stops the workers. Queues still waiting are not written to (Writer.Close is
// called once every connection is finished).
func (p *pool) close() {
	close(p.stop)
	p.wg.Wait()
}
