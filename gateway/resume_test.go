package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/producer/message"
)

// publishN publishes n messages on the embedded bus (to channel ch, or everyone).
func (g *testGateway) publishN(n int, ch string) {
	g.t.Helper()
	for i := 0; i < n; i++ {
		m := message.Message{Channel: ch, Data: json.RawMessage(fmt.Sprint(i))}
		if _, err := g.bus.Publish(context.Background(), m); err != nil {
			g.t.Fatal(err)
		}
	}
}

// waitDispatched waits until the hub has dispatched the message at offset.
func (g *testGateway) waitDispatched(offset int64) {
	g.t.Helper()
	c := g.dial("") // a welcome names the newest offset dispatched
	defer c.ws.Close()
	gwtest.WaitFor(g.t, fmt.Sprintf("offset %d dispatched", offset), func() bool {
		w := g.dial("")
		defer w.ws.Close()
		off, _ := w.expect("welcome").num("offset")
		return off >= offset
	})
}

// messagesUntil reads frames until op arrives, returning the message offsets before it
// and the frame.
func (c *client) messagesUntil(op string) ([]int64, frame) {
	c.t.Helper()
	var offs []int64
	for {
		f := c.next()
		switch f.str("op") {
		case "message":
			off, _ := f.num("offset")
			offs = append(offs, off)
		case op:
			return offs, f
		default:
			c.t.Fatalf("got %v while waiting for %s", f, op)
		}
	}
}

func seq(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func equalOffsets(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestResumeAtConnect(t *testing.T) {
	g := newTestGatewayRetaining(t, gateway.Config{}, nil, consumer.EmbeddedConfig{RetainMessages: 50})
	g.publishN(30, "")
	g.waitDispatched(29)

	newest := int64(29) // each case publishes one live message after its resume
	tests := []struct {
		name      string
		since     func() int64
		from      int64 // first offset replayed; nothing replayed when > newest
		wantReset bool
	}{
		{"from the middle", func() int64 { return 19 }, 20, false},
		{"everything retained", func() int64 { return -1 }, 0, false},
		{"at the oldest", func() int64 { return 0 }, 1, false},
		{"at the newest", func() int64 { return newest }, 1 << 62, false},
		{"beyond the newest", func() int64 { return newest + 1 }, 0, true},
		{"far beyond", func() int64 { return 1 << 40 }, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			since := tt.since()
			c := g.dial(fmt.Sprintf("since=%d", since))
			if off, _ := c.expect("welcome").num("offset"); off != newest {
				t.Errorf("welcome offset: got %d, want %d", off, newest)
			}
			if tt.wantReset {
				offs, f := c.messagesUntil("reset")
				if off, _ := f.num("offset"); len(offs) != 0 || off != newest {
					t.Errorf("got %v then reset %v, want reset at %d with nothing replayed", offs, f, newest)
				}
			} else {
				offs, f := c.messagesUntil("resumed")
				if want := seq(tt.from, newest); !equalOffsets(offs, want) {
					t.Errorf("replayed %v, want %v", offs, want)
				}
				gotSince, _ := f.num("since")
				until, _ := f.num("until")
				if gotSince != since || until != newest {
					t.Errorf("got %v, want resumed since %d until %d", f, since, newest)
				}
			}
			// Live delivery follows.
			g.publishN(1, "")
			newest++
			if off, _ := c.expect("message").num("offset"); off != newest {
				t.Errorf("live message offset %d, want %d", off, newest)
			}
		})
	}
}

func TestResumeOlderThanRetentionResets(t *testing.T) {
	g := newTestGatewayRetaining(t, gateway.Config{}, nil, consumer.EmbeddedConfig{RetainMessages: 10})
	g.publishN(30, "")
	g.waitDispatched(29)
	c := g.dial("since=5") // 6..19 are gone
	c.expect("welcome")
	offs, f := c.messagesUntil("reset")
	if off, _ := f.num("offset"); len(offs) != 0 || off != 29 {
		t.Errorf("got %v then %v, want reset at 29", offs, f)
	}
	// The oldest retained offset is 20: since=19 resumes.
	c = g.dial("since=19")
	c.expect("welcome")
	if offs, _ := c.messagesUntil("resumed"); !equalOffsets(offs, seq(20, 29)) {
		t.Errorf("replayed %v, want 20..29", offs)
	}
}

func TestResumeFiltersByRoute(t *testing.T) {
	g := newTestGateway(t, gateway.Config{InsecureUserParam: true}, nil)
	pub := func(m message.Message) {
		m.Data = json.RawMessage(`1`)
		if _, err := g.bus.Publish(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	pub(message.Message{})                                     // 0: everyone
	pub(message.Message{Channel: "a"})                         // 1
	pub(message.Message{Channel: "b"})                         // 2
	pub(message.Message{Users: []string{"alice"}})             // 3
	pub(message.Message{Users: []string{"bob"}})               // 4
	pub(message.Message{Channel: "a", Users: []string{"bob"}}) // 5: users win
	g.waitDispatched(5)

	c := g.dial("user=alice&channels=a&since=-1")
	c.expect("welcome")
	if offs, _ := c.messagesUntil("resumed"); !equalOffsets(offs, []int64{0, 1, 3}) {
		t.Errorf("alice on a replayed %v, want [0 1 3]", offs)
	}

	// subscribe with since replays that one channel (not user-targeted messages).
	c.send(`{"op":"subscribe","channel":"a","since":-1,"ref":"s"}`)
	if f := c.expect("subscribed"); f.str("ref") != "s" {
		t.Errorf("got %v, want subscribed with ref s", f)
	}
	offs, f := c.messagesUntil("resumed")
	if !equalOffsets(offs, []int64{1}) || f.str("channel") != "a" {
		t.Errorf("channel replay: got %v then %v, want [1] then resumed for channel a", offs, f)
	}
	pub(message.Message{Channel: "a"}) // 6, live, once
	if off, _ := c.expect("message").num("offset"); off != 6 {
		t.Errorf("got offset %d, want 6", off)
	}
	c.quiet(100e6)
}

// TestResumeWhilePublishing replays while messages keep arriving at full speed: every
// client gets every offset after its since exactly once, in order, across the handover
// from replay to live delivery.
func TestResumeWhilePublishing(t *testing.T) {
	const total = 20000
	g := newTestGatewayRetaining(t, gateway.Config{}, nil, consumer.EmbeddedConfig{RetainMessages: total})
	var wg sync.WaitGroup
	wg.Go(func() { g.publishN(total, "") })

	type result struct {
		since int64
		offs  []int64
	}
	results := make(chan result, 8)
	for i := 0; i < 8; i++ {
		since := int64(i*2000 - 1)
		// A since beyond the log gets reset; dial once the publisher has got there, so
		// the replay runs while it goes on.
		gwtest.WaitFor(t, fmt.Sprintf("offset %d published", since), func() bool { return g.bus.Newest() >= since })
		c := g.dial(fmt.Sprintf("since=%d", since))
		c.expect("welcome")
		wg.Go(func() {
			var offs []int64
			for {
				f := c.next()
				switch f.str("op") {
				case "message":
					off, _ := f.num("offset")
					offs = append(offs, off)
					if off == total-1 {
						results <- result{since, offs}
						return
					}
				case "resumed":
					until, _ := f.num("until")
					t.Logf("since %d: replayed through %d, then live (%d published so far)", since, until, g.bus.Newest()+1)
				case "reset":
					t.Errorf("since %d: got reset, want resumed", since)
				}
			}
		})
	}
	wg.Wait()
	close(results)
	for r := range results {
		if want := seq(r.since+1, total-1); !equalOffsets(r.offs, want) {
			t.Errorf("since %d: got %d offsets (first %v), want %d contiguous from %d",
				r.since, len(r.offs), r.offs[:min(5, len(r.offs))], len(want), r.since+1)
		}
	}
}

// broadcastLog is a Log of n broadcast messages at offsets 0..n-1, each of 200 bytes of
// data; it counts its Replay calls in calls, when not nil.
type broadcastLog struct {
	n     int64
	calls *atomic.Int64
}

func (l broadcastLog) Newest() int64 { return l.n - 1 }

func (l broadcastLog) KnownNewest() (int64, bool) { return l.n - 1, true }

func (l broadcastLog) Oldest(context.Context) (int64, bool) { return 0, true }

func (l broadcastLog) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
	if l.calls != nil {
		l.calls.Add(1)
	}
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

// stacksWith logs the stacks of the goroutines whose stack mentions what.
func stacksWith(t *testing.T, what string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, what) {
			t.Logf("%s", g)
		}
	}
}

// TestResumeOfADepartedClientEnds: a client resumes at connect (since=-1) from a long
// log and goes away. The connection must end and be untracked at once, not when the
// gateway drains. (It did not: the writer's failed write closed the socket and left the
// queue open, and only the read pump, not started yet during a resume at connect, would
// have finished the connection; the replay waited for room that no writer would make.)
func TestResumeOfADepartedClientEnds(t *testing.T) {
	log := broadcastLog{n: 1 << 20}
	g := newTestGateway(t, gateway.Config{Log: log, WriteQueueBytes: 8 << 10, WriteTimeout: 300 * time.Millisecond,
		PingInterval: 100 * time.Millisecond, SocketSendBuffer: 4096}, takingBus{})
	g.hub.SetLogStart(log.Newest())
	c := g.dial("since=-1")
	_ = c.ws.NetConn().Close() // the client goes away without reading

	deadline := time.Now().Add(5 * time.Second)
	for gwtest.Counter(t, g.reg, "herald_connections") != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := gwtest.Counter(t, g.reg, "herald_connections"); n != 0 {
		stacksWith(t, "EnqueueReplay")
		t.Fatalf("%v connections of a departed client still open 5s later (the resume stuck in EnqueueReplay)", n)
	}
}

// TestResumeStopsReplayingOnceClosing: once the connection is closing, the replay ends.
// (It did not: the replay's callback stopped each read of the log, but the loop around it
// read again from one message further, a Replay call, on RabbitMQ a new stream consumer,
// for every message left in the log, and Shutdown waited for all of them.)
func TestResumeStopsReplayingOnceClosing(t *testing.T) {
	calls := new(atomic.Int64)
	log := broadcastLog{n: 5000, calls: calls}
	g := newTestGateway(t, gateway.Config{Log: log, WriteQueueBytes: 8 << 10, PingInterval: time.Hour}, takingBus{})
	g.hub.SetLogStart(log.Newest())
	c := g.dial("since=-1")
	// Do not read: the replay fills the socket and waits for room. Then drain.
	time.Sleep(300 * time.Millisecond)
	before := calls.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() { _, _ = io.Copy(io.Discard, c.ws.NetConn()) }()
	err := g.srv.Shutdown(ctx)
	after := calls.Load()
	t.Logf("Replay calls: %d before close, %d after; shutdown: %v", before, after, err)
	if after-before > 10 {
		t.Fatalf("resume called Log.Replay %d more times after the connection began closing", after-before)
	}
}

// TestReplayResetsWhenTheLogEvictsUnderIt: a client resumes from since=0 at its own
// (slow) pace while publishes evict, from the embedded bus's ring, messages the replay
// has not reached. The client gets every offset in order until a reset, never a gap
// followed by resumed. (It got a gap: the embedded log's Replay starts at its oldest
// retained offset when asked for an older one, and resume checked for a cut only on its
// first message.)
func TestReplayResetsWhenTheLogEvictsUnderIt(t *testing.T) {
	g := newTestGatewayRetaining(t, gateway.Config{WriteQueueBytes: 16 << 10, SocketSendBuffer: 4096, PingInterval: time.Hour},
		nil, consumer.EmbeddedConfig{RetainMessages: 100})
	data := json.RawMessage(`"` + strings.Repeat("x", 4000) + `"`)
	publish := func(n int) {
		for range n {
			if _, err := g.bus.Publish(context.Background(), message.Message{Data: data}); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(100)
	gwtest.WaitFor(t, "offset 99 dispatched", func() bool { off, _ := g.hub.Newest(); return off >= 99 })
	d := websocket.Dialer{ReadBufferSize: 1024}
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(g.http.URL, "http")+"/ws?since=0", nil)
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
			if websocket.IsCloseError(err, gateway.CloseSlowConsumer) {
				// Reset and joined live while the 300 were still being dispatched, faster
				// than this client reads: closed as a slow consumer, before it read the
				// reset. No gap either: it reconnects with since and is reset then.
				t.Logf("after offset %d: %v", prev, err)
				return
			}
			stacksWith(t, "gateway")
			t.Fatalf("after offset %d: %v", prev, err)
		}
		switch f["op"] {
		case "message":
			off := int64(f["offset"].(float64))
			if off != prev+1 {
				t.Fatalf("gap in the replay: offset %d after %d, with no reset", off, prev)
			}
			prev = off
		case "reset", "resumed":
			return // reset: the client was told to reload; resumed: it got everything
		default:
			t.Logf("frame %v", f)
		}
	}
}

// slowChannelLog is a Log of n messages on channel "c" that delivers one per millisecond,
// as a broker's stream may.
type slowChannelLog struct{ n int64 }

func (l slowChannelLog) Newest() int64 { return l.n - 1 }

func (l slowChannelLog) KnownNewest() (int64, bool) { return l.n - 1, true }

func (l slowChannelLog) Oldest(context.Context) (int64, bool) { return 0, true }

func (l slowChannelLog) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
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

// TestChannelReplayKeepsTheReadDeadlineMoving: subscribe with since replays on the read
// pump, which does not read meanwhile; a steady replay longer than PingInterval plus
// PongTimeout must not let the read deadline pass, or a client that answers every ping
// is dropped (1006) once the replay is done. (It was: the deadline moved only when the
// replay waited a whole PingInterval for room.)
func TestChannelReplayKeepsTheReadDeadlineMoving(t *testing.T) {
	log := slowChannelLog{n: 400}
	g := newTestGateway(t, gateway.Config{Log: log, PingInterval: 50 * time.Millisecond, PongTimeout: 50 * time.Millisecond}, takingBus{})
	g.hub.SetLogStart(log.Newest())
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(g.http.URL, "http")+"/ws", nil)
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

// countingLog is the bus's log, wrapped to count its reads.
type countingLog struct {
	gateway.Log
	reads atomic.Int64
}

func (l *countingLog) wrap(log gateway.Log) { l.Log = log }

func (l *countingLog) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
	l.reads.Add(1)
	return l.Log.Replay(ctx, since, fn)
}

// TestTailResumeReadsNoLog: a since inside the tail of the log in memory is served from
// there, at connect and at subscribe, and the bus's log is not read at all; a since below
// the tail's edge reads the log (here the embedded bus, which keeps no history beyond the
// tail: reset), never a tail with a hole.
func TestTailResumeReadsNoLog(t *testing.T) {
	log := &countingLog{}
	g := newTestGatewayRetaining(t, gateway.Config{Log: log}, nil, consumer.EmbeddedConfig{RetainMessages: 100})
	g.publishN(100, "")
	g.publishN(100, "c") // 100..199 on channel c; the tail holds 100..199
	g.waitDispatched(199)

	c := g.dial("since=150&channels=c")
	c.expect("welcome")
	offs, f := c.messagesUntil("resumed")
	if !equalOffsets(offs, seq(151, 199)) {
		t.Errorf("replayed %v, want 151..199", offs)
	}
	if until, _ := f.num("until"); until != 199 {
		t.Errorf("got %v, want until 199", f)
	}
	s := g.dial("")
	s.expect("welcome")
	s.send(map[string]any{"op": "subscribe", "channel": "c", "since": 180, "ref": "1"})
	s.expect("subscribed")
	if offs, _ := s.messagesUntil("resumed"); !equalOffsets(offs, seq(181, 199)) {
		t.Errorf("subscribe replayed %v, want 181..199", offs)
	}
	g.publishN(1, "c")
	for _, cl := range []*client{c, s} {
		if off, _ := cl.expect("message").num("offset"); off != 200 {
			t.Errorf("live offset %d, want 200", off)
		}
	}
	if n := log.reads.Load(); n != 0 {
		t.Fatalf("resumes inside the tail read the bus's log %d times, want 0", n)
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_resumes_total", "source", "tail"); n != 2 {
		t.Errorf("herald_resumes_total{source=tail} = %v, want 2", n)
	}

	// Below the edge (100 is evicted now: the tail holds 101..200).
	r := g.dial("since=99")
	r.expect("welcome")
	if offs, f := r.messagesUntil("reset"); len(offs) != 0 {
		t.Errorf("got %v then %v, want a reset", offs, f)
	}
	if log.reads.Load() == 0 {
		t.Error("a since below the tail's edge did not read the log")
	}
}
