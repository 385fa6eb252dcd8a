package gateway

// Regression tests for bugs a review of the write path and resume found: each test's comment
// tells the interleaving that went wrong before the fix, and the test asserts it no longer does.

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/producer/message"
)

// reviewLog is a Log of n broadcast messages at offsets 0..n-1.
type reviewLog struct{ n int64 }

func (l reviewLog) Newest() int64 { return l.n - 1 }

func (l reviewLog) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
	data := json.RawMessage(`"` + strings.Repeat("x", 200) + `"`)
	for off := max(since+1, 0); off < l.n; off++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !fn(message.Message{ID: message.NewID(), Offset: off, Time: time.Now(), Data: data}) {
			return nil
		}
	}
	return nil
}

func reviewServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	hub := NewHub(HubConfig{Metrics: metrics})
	if l, ok := cfg.Log.(reviewLog); ok {
		hub.SetLogStart(l.Newest())
	}
	cfg.Metrics, cfg.Registry = metrics, reg
	s, err := NewServer(cfg, hub, benchBus{}, benchBus{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *Server) tracked() int {
	s.conns.mu.Lock()
	defer s.conns.mu.Unlock()
	return len(s.conns.all)
}

// TestReviewResumeWriteFailureLeaksConn: a client resumes at connect (since=-1) from a
// long log and goes away. The writer's write fails; it closes the socket and returns with
// writing left true, but closeCode stays 0 and done stays open (only the read pump, not
// started yet during resumeConnect, would finish the connection). enqueueReplay then
// waits for room that no writer will ever make, waking every PingInterval forever: the
// connection is never finished or untracked (until Shutdown's requestClose).
func TestReviewResumeWriteFailureLeaksConn(t *testing.T) {
	s := reviewServer(t, Config{
		Log:              reviewLog{n: 1 << 20},
		WriteQueueBytes:  8 << 10,
		WriteTimeout:     300 * time.Millisecond,
		PingInterval:     100 * time.Millisecond,
		SocketSendBuffer: 4096,
	})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/ws?since=-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = ws.NetConn().Close() // the client goes away without reading

	deadline := time.Now().Add(5 * time.Second)
	for s.tracked() != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	n := s.tracked()
	s.conns.forEach(func(c *session) {
		t.Logf("stuck conn: %s", c.State())
	})
	if n != 0 {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "enqueueReplay") {
				t.Logf("%s", g)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.Shutdown(ctx) // requestClose frees the stuck replay
	if n != 0 {
		t.Fatalf("connection of a departed client still tracked 5s later (resume goroutine stuck in enqueueReplay)")
	}
}

// countingLog is reviewLog counting its Replay calls.
type countingLog struct {
	reviewLog
	calls *atomic.Int64
}

func (l countingLog) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
	l.calls.Add(1)
	return l.reviewLog.Replay(ctx, since, fn)
}

// TestReviewResumeAfterCloseReplaysOneMessagePerCall: once the connection is closing,
// enqueueReplay reports false and the Replay callback returns false, but resume's loop
// goes on (ctx is only cancelled by done, which the read pump closes, and the read pump
// has not started / is the replayer). Each round advances cursor by one message and calls
// Log.Replay again, so it walks the rest of the log one Replay call (for RabbitMQ: one new
// stream consumer) per message, and Shutdown (which relies on this exit) takes that long.
func TestReviewResumeAfterCloseReplaysOneMessagePerCall(t *testing.T) {
	calls := new(atomic.Int64)
	log := countingLog{reviewLog{n: 5000}, calls}
	s := reviewServer(t, Config{
		Log:             log,
		WriteQueueBytes: 8 << 10,
		PingInterval:    time.Hour,
	})
	s.hub.SetLogStart(log.Newest())
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/ws?since=-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	// Do not read: the replay fills the socket and waits for room. Then drain.
	time.Sleep(300 * time.Millisecond)
	before := calls.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() { _, _ = io.Copy(io.Discard, ws.NetConn()) }()
	err = s.Shutdown(ctx)
	after := calls.Load()
	t.Logf("Replay calls: %d before close, %d after; shutdown: %v", before, after, err)
	if after-before > 10 {
		t.Fatalf("resume called Log.Replay %d more times after the connection began closing", after-before)
	}
}

// TestReviewReplayGapWhenLogEvictsMidReplay: a client resumes from since=0 at its own
// (slow) pace; while it replays, publishes evict not-yet-replayed messages from the
// embedded ring. Embedded.Replay's read silently starts at the oldest retained offset
// (read: off = max(off, oldest)) and resume only checks for a cut on the first message
// (cursor == since), so the client gets a gap followed by "resumed" instead of "reset".
func TestReviewReplayGapWhenLogEvictsMidReplay(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	hub := NewHub(HubConfig{Metrics: metrics})
	bus := consumer.NewEmbedded(consumer.EmbeddedConfig{RetainMessages: 100}, hub)
	hub.SetLogStart(bus.Newest())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = bus.Run(ctx) }()
	s, err := NewServer(Config{Log: bus, Metrics: metrics, Registry: reg, WriteQueueBytes: 16 << 10,
		SocketSendBuffer: 4096, PingInterval: time.Hour}, hub, bus, bus)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = s.Shutdown(sctx)
	}()
	data := json.RawMessage(`"` + strings.Repeat("x", 4000) + `"`)
	publish := func(n int) {
		for i := 0; i < n; i++ {
			if _, err := bus.Publish(context.Background(), message.Message{Data: data}); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(100)
	for off, _ := hub.Newest(); off < 99; off, _ = hub.Newest() {
		time.Sleep(5 * time.Millisecond)
	}
	d := websocket.Dialer{ReadBufferSize: 1024}
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/ws?since=0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	time.Sleep(200 * time.Millisecond) // the replay fills the buffers and waits
	publish(300)                       // evicts offsets the replay has not reached
	prev := int64(0)
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		var f map[string]any
		if err := ws.ReadJSON(&f); err != nil {
			s.conns.forEach(func(c *session) {
				t.Logf("conn: %s", c.State())
			})
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			for _, g := range strings.Split(string(buf), "\n\n") {
				if strings.Contains(g, "gateway.(*") {
					t.Logf("%s", g)
				}
			}
			t.Fatalf("after offset %d: %v", prev, err)
		}
		if f["op"] != "message" {
			t.Logf("frame %v", f)
		}
		switch f["op"] {
		case "message":
			off := int64(f["offset"].(float64))
			if off != prev+1 {
				t.Fatalf("gap in the replay: offset %d after %d, with no reset", off, prev)
			}
			prev = off
		case "reset":
			return // acceptable: the client was told to reload
		case "resumed":
			return
		}
	}
}

// slowChanLog is a Log of n messages on channel "c" that delivers one per millisecond,
// as a broker's stream may.
type slowChanLog struct{ n int64 }

func (l slowChanLog) Newest() int64 { return l.n - 1 }

func (l slowChanLog) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
	for off := max(since+1, 0); off < l.n; off++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(time.Millisecond)
		if !fn(message.Message{ID: message.NewID(), Channel: "c", Offset: off, Time: time.Now(), Data: json.RawMessage(`1`)}) {
			return nil
		}
	}
	return nil
}

// TestReviewChannelReplayLetsReadDeadlineExpire: subscribe with since runs the replay on
// the read pump. enqueueReplay extends the read deadline only when it waits a whole
// PingInterval for room; a replay that proceeds steadily never does, so the deadline set
// before the replay (PingInterval+PongTimeout) passes while the read pump is not reading.
// The client answers every ping, but once the replay is done the read pump's next read
// fails at once with a timeout and a healthy connection is dropped (1006).
func TestReviewChannelReplayLetsReadDeadlineExpire(t *testing.T) {
	log := slowChanLog{n: 400}
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	hub := NewHub(HubConfig{Metrics: metrics})
	hub.SetLogStart(log.Newest())
	s, err := NewServer(Config{Log: log, Metrics: metrics, Registry: reg,
		Logger:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		PingInterval: 50 * time.Millisecond, PongTimeout: 50 * time.Millisecond}, hub, benchBus{}, benchBus{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = s.Shutdown(sctx)
	}()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	stage := "before resumed"
	read := func() map[string]any {
		var f map[string]any
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := ws.ReadJSON(&f); err != nil { // the client's pong handler answers pings here
			t.Fatalf("connection dropped %s: %v", stage, err)
		}
		return f
	}
	read() // welcome
	if err := ws.WriteJSON(map[string]any{"op": "subscribe", "channel": "c", "since": -1, "ref": "1"}); err != nil {
		t.Fatal(err)
	}
	for f := read(); f["op"] != "resumed"; f = read() {
	}
	stage = "after resumed"
	if err := ws.WriteJSON(map[string]any{"op": "subscribe", "channel": "d", "ref": "2"}); err != nil {
		t.Fatal(err)
	}
	if f := read(); f["op"] != "subscribed" {
		t.Fatalf("got %v", f)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

type recMember struct{ got []int64 }

func (m *recMember) Enqueue(f *wire.Frame) { m.got = append(m.got, f.Offset) }
func (m *recMember) User() string          { return "" }
func (m *recMember) SkipThrough(int64)     {}

// TestReviewResubscribeDropsReplaySkip: subscribeAt stores the replay's skip offset in the
// channel index; a later plain subscribe to the same channel (the client repeats its
// subscribe) overwrites it with noSkip, so messages the replay already gave (dispatch
// lagging behind the embedded log) are delivered a second time live.
func TestReviewResubscribeDropsReplaySkip(t *testing.T) {
	h := NewHub(HubConfig{DedupWindow: -1})
	h.SetLogStart(5) // dispatched through 5; the log (and the replay) reached 10
	m := &recMember{}
	h.join(m, nil, func(int64, bool) {})
	if !h.subscribeAt(m, "c", 10, false, func() {}) {
		t.Fatal("subscribeAt refused")
	}
	h.subscribe(m, "c", false, func() {}) // the client subscribes again, without since
	for off := int64(6); off <= 11; off++ {
		h.Dispatch(message.Message{Channel: "c", Offset: off, Data: json.RawMessage(`1`)})
	}
	if len(m.got) != 1 || m.got[0] != 11 {
		t.Fatalf("live delivery after the replay through 10 gave offsets %v, want [11]", m.got)
	}
}
