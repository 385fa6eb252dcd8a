package writer

// Benchmarks of the write path's hot spots: queueing a frame, as fan-out does for each
// recipient, and writing a batch to a real loopback socket, as a writer does. CI runs them
// as a smoke test with a short -benchtime; compare runs with benchstat. The whole-system
// figures (CPU per delivery, latency, RSS per connection) come from
// gateway/cmd/herald-bench.

import (
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/wire"
)

// benchWriter is a Writer as a server makes it by default, counting into real metrics.
func benchWriter(b *testing.B) *Writer {
	w := New(Config{QueueBytes: 1 << 20, FlushInterval: 10 * time.Millisecond, Workers: 1,
		Metrics: metrics.New(prometheus.NewRegistry(), metrics.Series{})})
	b.Cleanup(w.Close)
	return w
}

// BenchmarkEnqueue queues one shared frame to a connection, as fan-out does for each
// recipient; the queue is emptied every 64 frames, as a writer would.
func BenchmarkEnqueue(b *testing.B) {
	q := &Queue{}
	q.InitUnwritten(benchWriter(b), &testOwner{})
	f := benchFrame(1)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		q.Enqueue(f)
		if i++; i%64 == 0 {
			q.Clear()
		}
	}
}

// realQueue returns a queue writing to a real loopback socket, idle, whose client reads
// and discards everything.
func realQueue(b *testing.B, enc wire.Encoding) *Queue {
	b.Helper()
	q, _, client := newQueue(b, benchWriter(b), enc)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		_, _ = io.Copy(io.Discard, client)
	}()
	b.Cleanup(func() {
		q.Finish()
		<-drained
	})
	return q
}

// BenchmarkWriteBatch is a writer's flush: a batch of frames written to a connection over
// loopback TCP, whose client drains the socket in another goroutine. ns/frame is the cost
// of one delivery's write, syscall included.
func BenchmarkWriteBatch(b *testing.B) {
	for _, size := range []int{1, 4, 16, 64} {
		b.Run("frames="+strconv.Itoa(size), func(b *testing.B) {
			q := realQueue(b, wire.Encoding{})
			batch := make([]*wire.Frame, size)
			for i := range batch {
				batch[i] = benchFrame(int64(i))
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := q.writeBatch(batch, 0); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(size), "ns/frame")
		})
	}
}

// BenchmarkWriteTurn is a writer worker's turn at a connection with one frame queued (the
// common case of a broadcast at a low rate per connection): take the queue, one
// non-blocking write to a real loopback socket, hand the connection back. ns/op is the
// cost of one delivery's write, syscall included, with no goroutine: to a WebSocket
// connection, and to a Server-Sent Events one (whose event bytes the frame makes once,
// for every such recipient: the turn only copies them). The turns are counted into the
// metrics every 64 turns, as a worker flushes its tally at the end of a pass through its
// ready connections. ws-traced is ws with the frame traced (--trace-dispatches).
func BenchmarkWriteTurn(b *testing.B) {
	for _, tt := range []struct {
		name  string
		enc   wire.Encoding
		trace bool
	}{{"ws", wire.Encoding{}, false}, {"sse", wire.Encoding{Events: true}, false}, {"ws-traced", wire.Encoding{}, true}} {
		b.Run(tt.name, func(b *testing.B) { benchWriteTurn(b, tt.enc, tt.trace) })
	}
}

// benchWriteTurn runs the turns; with trace, the frame is one the hub traces
// (--trace-dispatches), whose last write each turn notes.
func benchWriteTurn(b *testing.B, enc wire.Encoding, trace bool) {
	q := realQueue(b, enc)
	if !q.sock.Direct() {
		b.Skip("no non-blocking writes on this platform")
	}
	f := benchFrame(1)
	if trace {
		f.Trace = &wire.Trace{}
	}
	var buf []byte
	var tally metrics.Tally
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		q.mu.Lock()
		q.frames = append(q.frames, f)
		q.queued += f.Size()
		q.writing = true // as startWriter does before it submits q to a worker
		q.writers.Add(1)
		q.mu.Unlock()
		buf = q.writeTurn(buf[:0], &tally)
		if i++; i%64 == 0 {
			q.w.metrics.Flush(&tally)
		}
	}
}

// BenchmarkWorkClock reads the home worker's clock (its thread's CPU time on Linux), as it
// does twice for each chunk of 16 queues or more.
func BenchmarkWorkClock(b *testing.B) {
	for b.Loop() {
		workClock()
	}
}
