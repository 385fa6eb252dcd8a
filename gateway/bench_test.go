package gateway

// Benchmarks of the fan-out's hot paths, through the real code: encoding a message's frame,
// routing a message to its recipients, and queueing it to each (the writes are
// benchmarked in internal/writer). CI runs them as a smoke test with a short -benchtime;
// compare runs with benchstat. The whole-system figures (CPU per delivery, latency, RSS
// per connection) come from gateway/cmd/herald-bench.

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

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

func (*nopMember) Enqueue(*wire.Frame) {}
func (*nopMember) User() string        { return "" }
func (*nopMember) SkipThrough(int64)   {}

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

// idleConn returns a minimal session of s for enqueue alone: its queue has no writer,
// and the benchmark empties it itself.
func idleConn(s *Server) *session {
	c := &session{id: "bench", deps: &s.sessionDeps, log: s.logger}
	c.Queue.InitUnwritten(s.writer, c)
	return c
}

// BenchmarkDispatchToConns is Dispatch with enqueue to n real (writer-less) connections:
// the fan-out's cost per message up to the write queues.
func BenchmarkDispatchToConns(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			s := newBenchServer(b)
			conns := make([]*session, n)
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
						c.Clear()
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/recipient")
		})
	}
}

// nopTransport is a transport with no socket, for a session in a benchmark.
type nopTransport struct{}

func (nopTransport) Start()                {}
func (nopTransport) ExtendRead()           {}
func (nopTransport) SendClose(int, string) {}
func (nopTransport) Stop()                 {}

// BenchmarkResumeFromTail1000To1000 resumes 1,000 connections, one after the other, from
// a tail that holds 1,000 messages (the whole resume: replay, hand-over under the hub's
// lock, the resumed frame): one op is a million replayed deliveries. The replay queues the
// frames live delivery made, shared: allocs/client is the resume's fixed cost (its
// context, the resumed frame), not a frame per message.
func BenchmarkResumeFromTail1000To1000(b *testing.B) {
	s := newBenchServer(b)
	for off := range int64(1000) {
		s.hub.Dispatch(benchMessage(off))
	}
	s.hub.SetLogStart(999)
	s.resume.history = benchLog{} // a bus with a log; a tail resume never reads it
	conns := make([]*session, 1000)
	for i := range conns {
		conns[i] = idleConn(s)
		conns[i].t = nopTransport{}
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, c := range conns {
			s.resume.connect(c, -1, []string{"bench"})
			if n, _ := c.Depth(); n != 1001 { // 1,000 messages and resumed
				b.Fatalf("queued %d frames, want 1001", n)
			}
			s.hub.leave(c)
			c.Clear()
		}
	}
}

// benchLog is a Log that a benchmark must never read.
type benchLog struct{}

func (benchLog) Replay(context.Context, int64, func(message.Message) bool) error {
	panic("the log was read")
}
func (benchLog) Oldest(context.Context) (int64, bool) { return 0, true }
func (benchLog) KnownNewest() (int64, bool)           { return 0, false }
