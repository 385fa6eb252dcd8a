package writer

import (
	"sync"
	"sync/atomic"
	"time"
)

// flusher coalesces a busy connection's writes. Time is cut into ticks of one interval: a
// connection that has written in the current tick does not write again in it; its frames
// wait for the next tick and go out together, in one write. A connection that has not
// written in the current tick writes at once, so a quiet connection's frame is never held
// back; pings and close frames are never held back. One goroutine advances the ticks and
// starts the writers of the connections that waited.
type flusher struct {
	interval time.Duration
	tick     atomic.Int64

	// mu protects pending: the connections waiting for the next tick.
	mu      sync.Mutex
	pending []*Queue

	stop chan struct{}
	done chan struct{}
}

func newFlusher(interval time.Duration) *flusher {
	f := &flusher{interval: interval, stop: make(chan struct{}), done: make(chan struct{})}
	f.tick.Store(1) // a new connection's flushedTick is 0: its first write is never held
	go f.run()
	return f
}

// schedule makes q's writer start at the next tick. The caller holds q.mu.
func (f *flusher) schedule(q *Queue) {
	f.mu.Lock()
	f.pending = append(f.pending, q)
	f.mu.Unlock()
}

func (f *flusher) run() {
	defer close(f.done)
	t := time.NewTicker(f.interval)
	defer t.Stop()
	var batch []*Queue
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		f.tick.Add(1)
		f.mu.Lock()
		batch, f.pending = f.pending, batch[:0]
		f.mu.Unlock()
		for i, q := range batch {
			q.mu.Lock()
			q.scheduled = false
			q.startWriter()
			q.mu.Unlock()
			batch[i] = nil
		}
	}
}

// close stops the ticks. Connections still waiting are not written to (Writer.Close is
// called once every connection is finished).
func (f *flusher) close() {
	close(f.stop)
	<-f.done
}
