package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/producer/message"
)

// event is one Server-Sent Event as a client parses it (the WHATWG HTML standard,
// section 9.2.6), with its raw id line, if any.
type event struct {
	id    string
	hasID bool
	name  string
	data  string
}

func (e event) frame(t *testing.T) frame {
	t.Helper()
	var f frame
	if err := json.Unmarshal([]byte(e.data), &f); err != nil {
		t.Fatalf("event %q: data is not a JSON object: %v", e.name, err)
	}
	return f
}

// sseClient reads an event stream: events go to a channel, with the comments and
// retry hints counted.
type sseClient struct {
	t        *testing.T
	resp     *http.Response
	events   chan event
	comments chan struct{}
	retry    chan string
	ended    chan struct{}
}

// sseDial opens GET /sse?query with the request headers h; it fails the test on any
// answer but 200 (see sseTry).
func (g *testGateway) sseDial(query string, h http.Header) *sseClient {
	g.t.Helper()
	c, resp := g.sseTry(query, h)
	if c == nil {
		body, _ := io.ReadAll(resp.Body)
		g.t.Fatalf("GET /sse?%s: HTTP %d %s", query, resp.StatusCode, body)
	}
	return c
}

// sseTry opens GET /sse?query; a refusal is returned as the response, nil client.
func (g *testGateway) sseTry(query string, h http.Header) (*sseClient, *http.Response) {
	g.t.Helper()
	req, err := http.NewRequest(http.MethodGet, g.http.URL+"/sse?"+query, nil)
	if err != nil {
		g.t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatalf("GET /sse?%s: %v", query, err)
	}
	g.t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		return nil, resp
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		g.t.Fatalf("Content-Type %q, want text/event-stream", ct)
	}
	c := &sseClient{t: g.t, resp: resp, events: make(chan event, 1024), comments: make(chan struct{}, 1024),
		retry: make(chan string, 4), ended: make(chan struct{})}
	go c.read()
	return c, resp
}

func (c *sseClient) read() {
	defer close(c.ended)
	defer close(c.events)
	r := bufio.NewReader(c.resp.Body)
	var e event
	var data []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch {
		case line == "":
			if data != nil {
				e.data = strings.Join(data, "\n")
				c.events <- e
			}
			e, data = event{}, nil
		case field == "":
			select {
			case c.comments <- struct{}{}:
			default:
			}
		case field == "id":
			e.id, e.hasID = value, true
		case field == "event":
			e.name = value
		case field == "data":
			data = append(data, value)
		case field == "retry":
			c.retry <- value
		}
	}
}

// next returns the next event, failing the test after 5s or at the end of the stream.
func (c *sseClient) next() event {
	c.t.Helper()
	select {
	case e, ok := <-c.events:
		if !ok {
			c.t.Fatal("the stream ended")
		}
		return e
	case <-time.After(5 * time.Second):
		c.t.Fatal("no event within 5s")
	}
	return event{}
}

// expect reads the next event and checks its name, and that its data's op is the same.
func (c *sseClient) expect(name string) event {
	c.t.Helper()
	e := c.next()
	if e.name != name {
		c.t.Fatalf("got event %q (%s), want %q", e.name, e.data, name)
	}
	if op := e.frame(c.t).str("op"); op != name {
		c.t.Fatalf("event %q carries op %q", name, op)
	}
	return e
}

// endsWithin waits for the stream's end.
func (c *sseClient) endsWithin(d time.Duration) bool {
	select {
	case <-c.ended:
		return true
	case <-time.After(d):
		return false
	}
}

func TestSSEDelivers(t *testing.T) {
	g := newTestGateway(t, gateway.Config{PingInterval: 100 * time.Millisecond}, nil)
	g.publishN(3, "news")
	g.waitDispatched(2)

	c := g.sseDial("channels=news", nil)
	if got := <-c.retry; got == "" {
		t.Error("no retry hint")
	}
	w := c.expect("welcome")
	if !w.hasID || w.id != "2" {
		t.Errorf("welcome id %q (present %v), want 2: the newest offset, where live delivery begins", w.id, w.hasID)
	}
	ws := g.dial("channels=news")
	ws.expect("welcome")

	g.publishN(1, "news")
	g.publishN(1, "other")
	g.publishN(1, "news")
	for _, want := range []int64{3, 5} {
		e := c.expect("message")
		if !e.hasID || e.id != strconv.FormatInt(want, 10) {
			t.Errorf("message id %q, want %d", e.id, want)
		}
		f := ws.expect("message")
		got := e.frame(t)
		if fmt.Sprint(got) != fmt.Sprint(f) {
			t.Errorf("SSE data %v, WebSocket frame %v: want the same object", got, f)
		}
	}
	select {
	case <-c.comments:
	case <-time.After(5 * time.Second):
		t.Error("no heartbeat comment")
	}
	for _, tr := range []string{"ws", "sse"} {
		if n := gwtest.CounterWith(t, g.reg, "herald_connections", "transport", tr); n < 1 {
			t.Errorf("connections{transport=%s}: %v, want at least 1", tr, n)
		}
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_connections_accepted_total", "transport", "sse"); n != 1 {
		t.Errorf("accepted{transport=sse}: %v, want 1", n)
	}
	gwtest.WaitFor(t, "the deliveries counted", func() bool {
		return gwtest.CounterWith(t, g.reg, "herald_messages_delivered_total", "transport", "sse") == 2
	})
	c.resp.Body.Close()
	gwtest.WaitFor(t, "the stream's close counted", func() bool {
		return gwtest.CounterWith(t, g.reg, "herald_connections_closed_total", "transport", "sse") == 1
	})
}

func TestSSEResume(t *testing.T) {
	g := newTestGatewayRetaining(t, gateway.Config{}, nil, consumer.EmbeddedConfig{RetainMessages: 50})
	g.publishN(10, "")
	g.waitDispatched(9)

	t.Run("Last-Event-ID wins over since", func(t *testing.T) {
		c := g.sseDial("since=0", http.Header{"Last-Event-ID": {"6"}})
		if w := c.expect("welcome"); w.hasID {
			t.Errorf("welcome of a resume has id %q: a reconnect during the replay would skip the rest", w.id)
		}
		for want := int64(7); want <= 9; want++ {
			e := c.expect("message")
			if e.id != strconv.FormatInt(want, 10) {
				t.Fatalf("replayed id %q, want %d", e.id, want)
			}
		}
		r := c.expect("resumed")
		if r.hasID {
			t.Errorf("resumed has id %q", r.id)
		}
		if since, _ := r.frame(t).num("since"); since != 6 {
			t.Errorf("resumed since %d, want 6", since)
		}
	})
	t.Run("since", func(t *testing.T) {
		c := g.sseDial("since=8", nil)
		c.expect("welcome")
		if e := c.expect("message"); e.id != "9" {
			t.Errorf("replayed id %q, want 9", e.id)
		}
		c.expect("resumed")
	})
	for _, bad := range []string{"abc", "-2", "1e3", "99999999999999999999"} {
		_, resp := g.sseTry("", http.Header{"Last-Event-ID": {bad}})
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("Last-Event-ID %q: HTTP %d, want 400", bad, resp.StatusCode)
		}
	}
}

func TestSSERefusals(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret, Leeway: -1},
		AllowedOrigins: []string{"https://app.example.com"}}, nil)
	perms := claims{"channels": []string{"news"}}
	for _, tt := range []struct {
		name   string
		query  string
		header http.Header
		want   int
	}{
		{"no token", "channels=news", nil, http.StatusUnauthorized},
		{"expired token", "token=" + hs(t, "alice", -time.Minute, perms), nil, http.StatusUnauthorized},
		{"bad token", "token=garbage", nil, http.StatusUnauthorized},
		{"forbidden channel", "channels=secret&token=" + hs(t, "alice", time.Hour, perms), nil, http.StatusForbidden},
		{"bad channel", "channels=a%20b&token=" + hs(t, "alice", time.Hour, perms), nil, http.StatusBadRequest},
		{"origin not allowed", "token=" + hs(t, "alice", time.Hour, perms), http.Header{"Origin": {"https://evil.example"}}, http.StatusForbidden},
	} {
		_, resp := g.sseTry(tt.query, tt.header)
		if resp.StatusCode != tt.want {
			t.Errorf("%s: HTTP %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
	// An allowed origin gets the CORS header of a credentialed EventSource.
	c := g.sseDial("channels=news", http.Header{"Origin": {"https://app.example.com"},
		"Authorization": {"Bearer " + hs(t, "alice", time.Hour, perms)}})
	if got := c.resp.Header.Get("Access-Control-Allow-Origin"); got != "https://app.example.com" ||
		c.resp.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("CORS: Allow-Origin %q, Allow-Credentials %q", got, c.resp.Header.Get("Access-Control-Allow-Credentials"))
	}
	c.expect("welcome")

	// A token that expires once the stream has begun: an error event that says what to
	// do, then the end.
	e := g.sseDial("token="+hs(t, "alice", 1500*time.Millisecond, perms), nil)
	e.expect("welcome")
	f := e.expect("error").frame(t)
	if f.str("code") != "token_expired" || !strings.Contains(f.str("message"), "fresh token") {
		t.Errorf("error event %v, want token_expired saying to reconnect with a fresh token", f)
	}
	if !e.endsWithin(5 * time.Second) {
		t.Error("the stream did not end after its error event")
	}
}

func TestSSEDrainEndsTheStream(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	c := g.sseDial("", nil)
	c.expect("welcome")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	f := c.expect("error").frame(t)
	if f.str("code") != "going_away" || !strings.Contains(f.str("message"), "Last-Event-ID") {
		t.Errorf("error event %v, want going_away saying to reconnect with Last-Event-ID", f)
	}
	if !c.endsWithin(5 * time.Second) {
		t.Error("the stream did not end on drain")
	}
	_, resp := g.sseTry("", nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a stream opened while draining: HTTP %d, want 503", resp.StatusCode)
	}
}

// TestSSEReaderThatNeverReads: a client that sends its request and never reads is closed
// at its write queue's cap, as a WebSocket one is, and its slot is given back.
func TestSSEReaderThatNeverReads(t *testing.T) {
	g := newTestGateway(t, gateway.Config{WriteQueueBytes: 64 << 10, SocketSendBuffer: 4096,
		WriteTimeout: 500 * time.Millisecond, Limits: gateway.Limits{MaxConnectionsPerIP: 1}}, nil)
	nc, err := net.Dial("tcp", g.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	fmt.Fprintf(nc, "GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
	gwtest.WaitFor(t, "the stream to open", func() bool { return g.hub.Len() == 1 })
	data := json.RawMessage(`"` + strings.Repeat("x", 8<<10) + `"`)
	for i := 0; i < 200 && gwtest.Counter(t, g.reg, "herald_slow_consumers_total") == 0; i++ {
		if _, err := g.bus.Publish(context.Background(), message.Message{Data: data}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	gwtest.WaitFor(t, "the slow reader closed", func() bool {
		return gwtest.Counter(t, g.reg, "herald_slow_consumers_total") == 1 && g.hub.Len() == 0
	})
	// Its slot (one per address here) is free again.
	gwtest.WaitFor(t, "a new stream from the address", func() bool {
		c, resp := g.sseTry("", nil)
		if c == nil {
			resp.Body.Close()
			return false
		}
		c.resp.Body.Close()
		return true
	})
}

// TestSSEIdleConnectionsFromOneAddress: 1,000 idle streams from one address are held,
// and the per-address limit refuses the next with 429 (a status, at connect).
func TestSSEIdleConnectionsFromOneAddress(t *testing.T) {
	const n = 1000
	g := newTestGateway(t, gateway.Config{Limits: gateway.Limits{MaxConnectionsPerIP: n,
		HandshakeRate: 1e6, HandshakeBurst: 2 * n}}, nil)
	addr := g.http.Listener.Addr().String()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		fmt.Fprintf(nc, "GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	gwtest.WaitFor(t, "1,000 streams open", func() bool { return g.hub.Len() == n })
	_, resp := g.sseTry("", nil)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("stream %d from one address: HTTP %d, want 429", n+1, resp.StatusCode)
	}
	// Streams that go give their slots back.
	for _, c := range conns[:10] {
		c.Close()
	}
	conns = conns[10:]
	gwtest.WaitFor(t, "closed streams to end", func() bool { return g.hub.Len() == n-10 })
	c := g.sseDial("", nil)
	c.expect("welcome")
}
