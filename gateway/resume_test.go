package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
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
	waitFor(g.t, fmt.Sprintf("offset %d dispatched", offset), func() bool {
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
		waitFor(t, fmt.Sprintf("offset %d published", since), func() bool { return g.bus.Newest() >= since })
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
