package gateway

// Benchmarks of the fan-out's hot paths, through the real code: encoding a message's frame,
// routing a message to its recipients, queueing a frame to a connection, and the write
// pump's flush to a real loopback socket. CI runs them as a smoke test with a short
// -benchtime; compare runs with benchstat. The whole-system figures (CPU per delivery,
// latency, RSS per connection) come from gateway/cmd/herald-bench.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/producer/message"
)

// benchData is a message's data of about 100 bytes, as the load tool sends.
var benchData = json.RawMessage(`{"ts":1763900000000000000,"seq":123456,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)

func benchMessage(off int64) message.Message {
	return message.Message{ID: "0123456789abcdef0123456789abcdef", Channel: "bench", Offset: off,
		Time: time.Unix(1763900000, 123456789), Data: benchData, Source: metrics.SourceHTTP}
}

// nopMember is a hub member that drops what it is given: Dispatch's own cost.
type nopMember struct{ n int }

func (*nopMember) enqueue(*wire.Frame) {}
func (*nopMember) user() string        { return "" }
func (*nopMember) skipThrough(int64)   {}

func BenchmarkNewMessageFrame(b *testing.B) {
	m := benchMessage(42)
	b.ReportAllocs()
	var f *wire.Frame
	for b.Loop() {
		f = newMessageFrame(m, time.Time{})
	}
	b.ReportMetric(float64(f.Size()), "frame-bytes")
}

// BenchmarkDispatch routes one message to n subscribers of its channel (or to every
// connection) that do nothing with it: the hub's routing alone. Deduplication is off, so
// that every iteration is a new message with the same id.
func BenchmarkDispatch(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		for _, route := range []string{"channel", "everyone"} {
			b.Run(fmt.Sprintf("members=%d/%s", n, route), func(b *testing.B) {
				h := NewHub(HubConfig{DedupWindow: -1, Metrics: NewMetrics(prometheus.NewRegistry())})
				for i := range n {
					h.join(&nopMember{n: i}, []string{"bench"}, func(int64, bool) {})
				}
				m := benchMessage(0)
				if route == "everyone" {
					m.Channel = ""
				}
				b.ReportAllocs()
				for b.Loop() {
					m.Offset++
					h.Dispatch(m)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/recipient")
			})
		}
	}
}

// newBenchServer returns a server with real metrics whose connections never ping during a
// benchmark.
func newBenchServer(b *testing.B) *Server {
	b.Helper()
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	hub := NewHub(HubConfig{DedupWindow: -1, Metrics: metrics})
	s, err := NewServer(Config{PingInterval: time.Hour, Metrics: metrics, Registry: reg}, hub, benchBus{}, benchBus{})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// benchBus takes every publish and is always connected.
type benchBus struct{}

func (benchBus) Publish(_ context.Context, m message.Message) (string, error) { return m.ID, nil }
func (benchBus) Connected() bool                                              { return true }

// idleConn returns a minimal connection of s for enqueue alone: it is marked as writing,
// so that no writer goroutine starts, and the benchmark empties its queue itself.
func idleConn(s *Server) *Conn {
	return &Conn{id: "bench", srv: s, log: s.logger, skip: noSkip, done: make(chan struct{}),
		room: make(chan struct{}, 1), writing: true}
}

// emptyQueue stands in for the write pump: it takes what c has queued.
func emptyQueue(c *Conn) {
	c.mu.Lock()
	c.clearQueue()
	c.mu.Unlock()
}

// BenchmarkEnqueue queues one shared frame to a connection, as fan-out does for each
// recipient; the queue is emptied every 64 frames, as a writer would.
func BenchmarkEnqueue(b *testing.B) {
	s := newBenchServer(b)
	c := idleConn(s)
	f := newMessageFrame(benchMessage(1), time.Time{})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.enqueue(f)
		if i++; i%64 == 0 {
			emptyQueue(c)
		}
	}
}

// BenchmarkDispatchToConns is Dispatch with enqueue to n real (writer-less) connections:
// the fan-out's cost per message up to the write queues.
func BenchmarkDispatchToConns(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			s := newBenchServer(b)
			conns := make([]*Conn, n)
			for i := range conns {
				conns[i] = idleConn(s)
				s.hub.join(conns[i], []string{"bench"}, func(int64, bool) {})
			}
			m := benchMessage(0)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				m.Offset++
				s.hub.Dispatch(m)
				if i++; i%64 == 0 {
					for _, c := range conns {
						emptyQueue(c)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/recipient")
		})
	}
}

// BenchmarkWriteBatch is the write pump's flush: a batch of frames written to a real
// gateway connection over loopback TCP, whose client drains the socket in another
// goroutine. ns/frame is the cost of one delivery's write, syscall included.
func BenchmarkWriteBatch(b *testing.B) {
	for _, size := range []int{1, 4, 16, 64} {
		b.Run("frames="+strconv.Itoa(size), func(b *testing.B) {
			c, stop := realConn(b)
			defer stop()
			batch := make([]*wire.Frame, size)
			for i := range batch {
				batch[i] = newMessageFrame(benchMessage(int64(i)), time.Time{})
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.writeBatch(batch, 0); err != nil {
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
// cost of one delivery's write, syscall included, with no goroutine.
func BenchmarkWriteTurn(b *testing.B) {
	c, stop := realConn(b)
	defer stop()
	f := newMessageFrame(benchMessage(1), time.Time{})
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		c.mu.Lock()
		c.queue = append(c.queue, f)
		c.queued += f.Size()
		c.writing = true // as startWriter does before it submits c to a worker
		c.writers.Add(1)
		c.mu.Unlock()
		buf = c.writeTurn(buf[:0])
	}
}

// realConn serves a real gateway connection over loopback and returns the server's side of
// it, idle (its welcome written), with a client that reads and discards everything.
func realConn(b *testing.B) (*Conn, func()) {
	b.Helper()
	s := newBenchServer(b)
	ts := httptest.NewServer(s.Handler())
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/ws?channels=bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := ws.ReadMessage(); err != nil { // welcome
		b.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		_, _ = io.Copy(io.Discard, ws.NetConn())
	}()
	var c *Conn
	for c == nil {
		s.connsMu.Lock()
		for cc := range s.all {
			c = cc
		}
		s.connsMu.Unlock()
	}
	// Wait until the writer that sent the welcome has ended: from now on the benchmark is
	// the connection's only writer.
	for {
		c.mu.Lock()
		idle := !c.writing
		c.mu.Unlock()
		if idle {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return c, func() {
		_ = ws.Close()
		<-drained
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		ts.Close()
	}
}
