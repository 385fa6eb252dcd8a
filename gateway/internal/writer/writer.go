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
	"sync/atomic"
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
		w.pool = newPool(cfg.Workers, cfg.Metrics)
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

// pool is a fixed set of writer workers (by default one per core but one) that write the
// connections' queued frames. A connection with something to write is handed to one of
// them (round robin, so that one message's fan-out is spread over every worker); the
// worker takes its queue and writes it in one non-blocking write. A socket that cannot
// take the whole write at once keeps the rest (Socket.pending), and the connection goes
// to a goroutine of its own (writeLoop) that waits for the socket; that goroutine also
// sends close frames. A worker so never waits on one client, and the common case (the
// socket takes the write) costs no goroutine. Connections without raw socket access (TLS)
// always get the goroutine.
type pool struct {
	workers []*worker
	next    atomic.Uint32
	wg      sync.WaitGroup
	stop    chan struct{}
}

// worker is one worker's queue of ready connections.
type worker struct {
	metrics *metrics.Metrics
	// mu protects ready: queues waiting for this worker, each owned by it (its writing
	// flag set) until the worker is done with it.
	mu    sync.Mutex
	ready []*Queue
	wake  chan struct{} // room for one signal: there is something in ready
}

func newPool(n int, m *metrics.Metrics) *pool {
	p := &pool{workers: make([]*worker, n), stop: make(chan struct{})}
	for i := range p.workers {
		w := &worker{metrics: m, wake: make(chan struct{}, 1)}
		p.workers[i] = w
		p.wg.Go(func() { w.run(p.stop) })
	}
	return p
}

// submit hands q, whose writing flag the caller has just set, to a worker. It never
// blocks. The caller holds q.mu.
func (p *pool) submit(q *Queue) {
	w := p.workers[p.next.Add(1)%uint32(len(p.workers))]
	w.mu.Lock()
	w.ready = append(w.ready, q)
	first := len(w.ready) == 1
	w.mu.Unlock()
	if first {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// run writes the queues handed to w until stop is closed. What it writes is counted in
// its tally over a pass through the queues ready, and flushed into the metrics at the
// pass's end: one flush per pass, however many writes (see metrics.Tally).
func (w *worker) run(stop <-chan struct{}) {
	var batch []*Queue
	var buf []byte // the worker's write buffer, reused for every connection
	var tally metrics.Tally
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
		for i, q := range batch {
			buf = q.writeTurn(buf[:0], &tally)
			batch[i] = nil
		}
		w.metrics.Flush(&tally)
		if cap(buf) > maxPooledBatch {
			buf = nil
		}
	}
}

// close stops the workers. Queues still waiting are not written to (Writer.Close is
// called once every connection is finished).
func (p *pool) close() {
	close(p.stop)
	p.wg.Wait()
}
