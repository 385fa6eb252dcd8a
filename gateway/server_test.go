package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/producer/message"
)

func TestWelcomeIsFirstAndNegotiatesSubprotocol(t *testing.T) {
	g := newTestGateway(t, gateway.Config{InsecureUserParam: true}, nil)
	c := g.dial("user=alice")
	if got := c.ws.Subprotocol(); got != gateway.Subprotocol {
		t.Errorf("got subprotocol %q, want %q", got, gateway.Subprotocol)
	}
	w := c.expect("welcome")
	if w.str("node") != "test-node" || w.str("user") != "alice" || w.str("conn") == "" {
		t.Errorf("got welcome %v, want node test-node, user alice and a conn id", w)
	}
	if off, ok := w.num("offset"); !ok || off != -1 {
		t.Errorf("got welcome offset %v, want -1 on an empty log", w["offset"])
	}

	// Once a message is in the log, welcome names its offset.
	if status, _ := g.publish(testKey, `{"data":1}`); status != http.StatusAccepted {
		t.Fatalf("publish: got %d, want 202", status)
	}
	c.expect("message")
	if off, _ := g.dial("").expect("welcome").num("offset"); off != 0 {
		t.Errorf("got welcome offset %d after one message, want 0", off)
	}
}

func TestRoutingEveryoneChannelUsers(t *testing.T) {
	g := newTestGateway(t, gateway.Config{InsecureUserParam: true}, nil)
	alice := g.dial("user=alice&channels=news")
	alice2 := g.dial("user=alice")
	bob := g.dial("user=bob&channels=news,sport")
	anon := g.dial("")
	all := map[string]*client{"alice": alice, "alice2": alice2, "bob": bob, "anon": anon}
	for _, c := range all {
		c.expect("welcome")
	}

	tests := []struct {
		body string
		want []string // who gets it
	}{
		{`{"data":"to all"}`, []string{"alice", "alice2", "bob", "anon"}},
		{`{"channel":"news","data":"news"}`, []string{"alice", "bob"}},
		{`{"channel":"sport","data":"sport"}`, []string{"bob"}},
		{`{"channel":"nobody","data":"lost"}`, nil},
		{`{"users":["alice"],"data":"for alice"}`, []string{"alice", "alice2"}},
		{`{"users":["alice","bob","alice"],"channel":"sport","data":"users win"}`, []string{"alice", "alice2", "bob"}},
		{`{"users":["carol"],"data":"offline"}`, nil},
	}
	for i, tt := range tests {
		status, body := g.publish(testKey, tt.body)
		if status != http.StatusAccepted {
			t.Fatalf("publish %s: got %d %v, want 202", tt.body, status, body)
		}
		var want struct {
			Data any `json:"data"`
		}
		_ = json.Unmarshal([]byte(tt.body), &want)
		for _, name := range tt.want {
			f := all[name].expect("message")
			if f["data"] != want.Data || f.str("id") != body["id"] {
				t.Errorf("case %d: %s got %v, want data %v and id %v", i, name, f, want.Data, body["id"])
			}
			if off, _ := f.num("offset"); off != int64(i) {
				t.Errorf("case %d: %s got offset %d, want %d", i, name, off, i)
			}
		}
	}
	// Nobody got anything more: each addressed connection got each message exactly once.
	for name, c := range all {
		c.send(map[string]any{"op": "publish", "channel": "probe-" + name, "data": 0, "ref": "p"})
		if f := c.expect("ack"); f.str("ref") != "p" {
			t.Errorf("%s: got %v, want ack with ref p", name, f)
		}
	}
}

func TestSubscribePublishUnsubscribe(t *testing.T) {
	g := newTestGateway(t, gateway.Config{InsecureUserParam: true}, nil)
	a := g.dial("user=alice")
	b := g.dial("user=bob")
	a.expect("welcome")
	b.expect("welcome")

	a.send(`{"op":"subscribe","channel":"room","ref":"s1"}`)
	if f := a.expect("subscribed"); f.str("channel") != "room" || f.str("ref") != "s1" {
		t.Fatalf("got %v, want subscribed room with ref s1", f)
	}
	b.send(`{"op":"subscribe","channel":"room"}`)
	b.expect("subscribed")

	b.send(`{"op":"publish","channel":"room","data":{"text":"hi"},"ref":"p1"}`)
	var ack, own frame
	for _, f := range []frame{b.next(), b.next()} { // ack and own copy, in either order
		switch f.str("op") {
		case "ack":
			ack = f
		case "message":
			own = f
		}
	}
	if ack == nil || own == nil || ack.str("ref") != "p1" || ack.str("id") != own.str("id") {
		t.Fatalf("got ack %v and message %v, want both with the same id", ack, own)
	}
	m := a.expect("message")
	if m.str("channel") != "room" || m.str("from") != "bob" || m.str("id") != ack.str("id") {
		t.Errorf("got %v, want a room message from bob with id %s", m, ack.str("id"))
	}
	if _, err := time.Parse(time.RFC3339Nano, m.str("time")); err != nil {
		t.Errorf("time %q: %v", m.str("time"), err)
	}
	if d, _ := json.Marshal(m["data"]); string(d) != `{"text":"hi"}` {
		t.Errorf("got data %s, want {\"text\":\"hi\"}", d)
	}

	a.send(`{"op":"unsubscribe","channel":"room","ref":"u1"}`)
	if f := a.expect("unsubscribed"); f.str("ref") != "u1" {
		t.Fatalf("got %v, want unsubscribed with ref u1", f)
	}
	g.publish(testKey, `{"channel":"room","data":2}`)
	b.expect("message")
	a.quiet(200 * time.Millisecond)
}

func TestErrorFrames(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	c := g.dial("")
	c.expect("welcome")
	tests := []struct {
		name, frame, code, ref string
	}{
		{"not JSON", `hello`, gateway.CodeBadRequest, ""},
		{"invalid JSON", `{"op":`, gateway.CodeBadRequest, ""},
		{"array", `[1,2]`, gateway.CodeBadRequest, ""},
		{"string", `"subscribe"`, gateway.CodeBadRequest, ""},
		{"missing op", `{"channel":"a","ref":"r1"}`, gateway.CodeBadRequest, "r1"},
		{"op not a string", `{"op":5,"ref":"r2"}`, gateway.CodeBadRequest, "r2"},
		{"channel wrong type", `{"op":"subscribe","channel":7,"ref":"r3"}`, gateway.CodeBadRequest, "r3"},
		{"subscribe without channel", `{"op":"subscribe","ref":"r4"}`, gateway.CodeBadRequest, "r4"},
		{"bad channel name", `{"op":"subscribe","channel":"a b","ref":"r5"}`, gateway.CodeBadRequest, "r5"},
		{"channel too long", `{"op":"subscribe","channel":"` + strings.Repeat("x", 129) + `","ref":"r6"}`, gateway.CodeBadRequest, "r6"},
		{"unsubscribe bad channel", `{"op":"unsubscribe","channel":"","ref":"r7"}`, gateway.CodeBadRequest, "r7"},
		{"publish without data", `{"op":"publish","channel":"a","ref":"r8"}`, gateway.CodeBadRequest, "r8"},
		{"publish bad channel", `{"op":"publish","channel":"é","data":1,"ref":"r9"}`, gateway.CodeBadRequest, "r9"},
		{"since below -1", `{"op":"subscribe","channel":"a","since":-2,"ref":"r10"}`, gateway.CodeBadRequest, "r10"},
		{"huge number", `{"op":"subscribe","channel":"a","since":1e999,"ref":"r11"}`, gateway.CodeBadRequest, "r11"},
		{"unknown op", `{"op":"dance","ref":"r12"}`, gateway.CodeUnknownOp, "r12"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.send(tt.frame)
			f := c.expect("error")
			if f.str("code") != tt.code || f.str("ref") != tt.ref || f.str("message") == "" {
				t.Errorf("got %v, want code %s, ref %q and a message", f, tt.code, tt.ref)
			}
		})
	}
	// The connection stays open through all of it.
	c.send(`{"op":"subscribe","channel":"still-here","ref":"ok"}`)
	c.expect("subscribed")
}

func TestPublishForbiddenAndUnavailable(t *testing.T) {
	g := newTestGateway(t, gateway.Config{DisableClientPublish: true}, nil)
	c := g.dial("")
	c.expect("welcome")
	c.send(`{"op":"publish","data":1,"ref":"f"}`)
	if f := c.expect("error"); f.str("code") != gateway.CodeForbidden || f.str("ref") != "f" {
		t.Errorf("got %v, want forbidden with ref f", f)
	}

	down := newTestGateway(t, gateway.Config{}, failingBus{})
	d := down.dial("")
	d.expect("welcome")
	d.send(`{"op":"publish","data":1,"ref":"u"}`)
	if f := d.expect("error"); f.str("code") != gateway.CodeUnavailable || f.str("ref") != "u" {
		t.Errorf("got %v, want unavailable with ref u", f)
	}
	if status, body := down.publish(testKey, `{"data":1}`); status != http.StatusServiceUnavailable {
		t.Errorf("HTTP publish on a down bus: got %d %v, want 503", status, body)
	}
	resp, err := http.Get(down.http.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("readyz on a down bus: got %d, want 503", resp.StatusCode)
	}
}

func TestCloseCodes(t *testing.T) {
	g := newTestGateway(t, gateway.Config{MaxMessageBytes: 1024}, nil)
	tests := []struct {
		name  string
		write func(ws *websocket.Conn) error
		want  int
	}{
		{"binary frame", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.BinaryMessage, []byte(`{"op":"subscribe"}`))
		}, websocket.CloseUnsupportedData},
		{"invalid UTF-8", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte{'{', 0xff, 0xfe, '}'})
		}, websocket.CloseInvalidFramePayloadData},
		{"too large", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"publish","data":"`+strings.Repeat("x", 2000)+`"}`))
		}, websocket.CloseMessageTooBig},
		{"too large when reassembled", func(ws *websocket.Conn) error {
			w, err := ws.NextWriter(websocket.TextMessage)
			if err != nil {
				return err
			}
			for i := 0; i < 8; i++ { // gorilla sends each write of a full buffer as a fragment
				if _, err := w.Write([]byte(strings.Repeat("y", 300))); err != nil {
					return err
				}
			}
			return w.Close()
		}, websocket.CloseMessageTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := g.dial("")
			c.expect("welcome")
			if err := tt.write(c.ws); err != nil {
				t.Fatal(err)
			}
			if got := c.closeCode(); got != tt.want {
				t.Errorf("got close code %d, want %d", got, tt.want)
			}
		})
	}
}

func TestSlowConsumerClosedWith4008(t *testing.T) {
	// Publishing waits for each delivery; coalescing writes would only slow that down.
	g := newTestGateway(t, gateway.Config{WriteQueueBytes: 64 << 10, FlushInterval: -1}, nil)
	if got := gwtest.Counter(t, g.reg, "herald_write_queue_cap_bytes"); got != 64<<10 {
		t.Errorf("herald_write_queue_cap_bytes: got %v, want the configured cap, %d", got, 64<<10)
	}
	slow := g.dial("channels=flood")
	slow.expect("welcome")
	healthy := g.dial("channels=flood")
	healthy.expect("welcome")

	// The publisher keeps pace with the healthy client, which reads each message before
	// the next is published; the slow client never reads, so its socket buffers fill and
	// then its write queue overflows.
	payload := json.RawMessage(`"` + strings.Repeat("z", 4000) + `"`)
	for i := 0; gwtest.Counter(t, g.reg, "herald_slow_consumers_total") == 0; i++ {
		if i == 20000 {
			t.Fatal("the slow client's queue never overflowed")
		}
		if _, err := g.bus.Publish(context.Background(), message.Message{Channel: "flood", Data: payload}); err != nil {
			t.Fatal(err)
		}
		if off, _ := healthy.expect("message").num("offset"); off != int64(i) {
			t.Fatalf("healthy client got offset %d, want %d", off, i)
		}
	}
	// The slow client never read: its queue overflowed. Now it reads what reached its
	// socket, then the close frame.
	if code := slow.closeCode(); code != gateway.CloseSlowConsumer {
		t.Errorf("slow client: got close code %d, want %d", code, gateway.CloseSlowConsumer)
	}
	if n := gwtest.Counter(t, g.reg, "herald_slow_consumers_total"); n != 1 {
		t.Errorf("got %v slow consumers, want 1 (the healthy client kept up)", n)
	}
	if d := gwtest.CounterWith(t, g.reg, "herald_messages_dropped_total", "reason", "slow_consumer"); d < 1 {
		t.Errorf("got %v dropped, want at least 1", d)
	}
}

// TestBusyConnectionWritesCoalesce: frames for a connection that has just written wait
// for the next flush tick and go out together, in one write.
func TestBusyConnectionWritesCoalesce(t *testing.T) {
	g := newTestGateway(t, gateway.Config{FlushInterval: 200 * time.Millisecond}, nil)
	c := g.dial("channels=burst")
	c.expect("welcome")
	writes := gwtest.Counter(t, g.reg, "herald_socket_writes_total")
	const n = 50
	for i := 0; i < n; i++ {
		if _, err := g.bus.Publish(context.Background(), message.Message{Channel: "burst", Data: json.RawMessage(`1`)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		c.expect("message")
	}
	// The first frame is written at once; the rest, queued within the same tick, wait
	// for the next tick: a few writes, not fifty. (The counters move just after the
	// write, so a moment after the client has read it.)
	gwtest.WaitFor(t, "the deliveries counted", func() bool { return gwtest.Counter(t, g.reg, "herald_messages_delivered_total") == n })
	if got := gwtest.Counter(t, g.reg, "herald_socket_writes_total") - writes; got < 1 || got > 5 {
		t.Errorf("%d frames took %v writes, want 2 to 5", n, got)
	}
	if got := gwtest.Counter(t, g.reg, "herald_messages_delivered_total"); got != n {
		t.Errorf("delivered: got %v, want %d", got, n)
	}
}

func TestHTTPPublishAPI(t *testing.T) {
	g := newTestGateway(t, gateway.Config{MaxMessageBytes: 512}, nil)
	c := g.dial("channels=a")
	c.expect("welcome")
	tests := []struct {
		name, key, body string
		status          int
		code            string
	}{
		{"no key", "", `{"data":1}`, http.StatusUnauthorized, "unauthorized"},
		{"wrong key", "nope", `{"data":1}`, http.StatusUnauthorized, "unauthorized"},
		{"key prefix", testKey[:4], `{"data":1}`, http.StatusUnauthorized, "unauthorized"},
		{"not JSON", testKey, `data=1`, http.StatusBadRequest, gateway.CodeBadRequest},
		{"array", testKey, `[1]`, http.StatusBadRequest, gateway.CodeBadRequest},
		{"missing data", testKey, `{"channel":"a"}`, http.StatusBadRequest, gateway.CodeBadRequest},
		{"bad channel", testKey, `{"channel":"a b","data":1}`, http.StatusBadRequest, gateway.CodeBadRequest},
		{"empty user", testKey, `{"users":[""],"data":1}`, http.StatusBadRequest, gateway.CodeBadRequest},
		{"users not strings", testKey, `{"users":[1],"data":1}`, http.StatusBadRequest, gateway.CodeBadRequest},
		{"too large", testKey, `{"data":"` + strings.Repeat("x", 600) + `"}`, http.StatusRequestEntityTooLarge, gateway.CodeTooLarge},
		{"accepted", testKey, `{"channel":"a","data":{"k":"v"}}`, http.StatusAccepted, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := g.publish(tt.key, tt.body)
			if status != tt.status {
				t.Fatalf("got %d %v, want %d", status, body, tt.status)
			}
			if tt.code == "" {
				if id, _ := body["id"].(string); id == "" {
					t.Errorf("got %v, want an id", body)
				}
				return
			}
			e, _ := body["error"].(map[string]any)
			if e["code"] != tt.code || e["message"] == "" {
				t.Errorf("got %v, want error code %s with a message", body, tt.code)
			}
		})
	}
	// Only the accepted one was delivered.
	if f := c.expect("message"); f.str("channel") != "a" {
		t.Errorf("got %v, want the accepted message", f)
	}
	c.quiet(100 * time.Millisecond)

	// A gateway without a key has the API off.
	noKey := newTestGatewayNoKey(t)
	if status, body := noKey.publish("", `{"data":1}`); status != http.StatusNotFound {
		t.Errorf("API without a key: got %d %v, want 404", status, body)
	}
	if status, _ := noKey.publish("anything", `{"data":1}`); status != http.StatusNotFound {
		t.Errorf("API without a key, any bearer: got %d, want 404", status)
	}
}

func newTestGatewayNoKey(t *testing.T) *testGateway {
	reg := prometheus.NewRegistry()
	hub := gateway.NewHub(gateway.HubConfig{})
	bus := consumer.NewEmbedded(consumer.EmbeddedConfig{}, hub)
	srv, err := gateway.NewServer(gateway.Config{Registry: reg}, hub, bus, bus)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return &testGateway{t: t, srv: srv, http: hs, reg: reg, bus: bus}
}

func TestRepeatedIDDeliveredOnce(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	c := g.dial("")
	c.expect("welcome")
	for i := 0; i < 3; i++ {
		status, body := g.publish(testKey, `{"id":"order-42","data":1}`)
		if status != http.StatusAccepted || body["id"] != "order-42" {
			t.Fatalf("publish %d: got %d %v, want 202 with id order-42", i, status, body)
		}
	}
	g.publish(testKey, `{"id":"order-43","data":2}`)
	if f := c.expect("message"); f.str("id") != "order-42" {
		t.Fatalf("got %v, want order-42", f)
	}
	if f := c.expect("message"); f.str("id") != "order-43" {
		t.Fatalf("got %v, want order-43 next (the repeats dropped)", f)
	}
	if d := gwtest.CounterWith(t, g.reg, "herald_messages_dropped_total", "reason", "duplicate"); d != 2 {
		t.Errorf("got %v duplicates dropped, want 2", d)
	}
}

func TestBadQueryRefusedBeforeUpgrade(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	for _, q := range []string{"channels=a,,b", "channels=" + url.QueryEscape("a b"), "since=x", "since=-2", "since=1.5"} {
		_, resp, err := g.tryDial(q)
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Errorf("?%s: got HTTP %d (%v), want 400", q, status, err)
		}
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	get := func(path string) (int, string) {
		resp, err := http.Get(g.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if s, _ := get("/healthz"); s != 200 {
		t.Errorf("healthz: got %d, want 200", s)
	}
	if s, _ := get("/readyz"); s != 200 {
		t.Errorf("readyz: got %d, want 200", s)
	}
	if s, body := get("/"); s != 200 || !strings.Contains(body, "Herald") {
		t.Errorf("demo page: got %d, want 200 with the page", s)
	}

	clients := []*client{g.dial("channels=m"), g.dial("channels=m"), g.dial("")}
	for _, c := range clients {
		c.expect("welcome")
	}
	for i := 0; i < 5; i++ {
		g.publish(testKey, `{"channel":"m","data":1}`)
	}
	for _, c := range clients[:2] {
		for i := 0; i < 5; i++ {
			c.expect("message")
		}
	}
	gwtest.WaitFor(t, "the deliveries counted", func() bool { return gwtest.Counter(t, g.reg, "herald_messages_delivered_total") >= 10 })
	checks := map[string]float64{
		"herald_connections":                3,
		"herald_connections_accepted_total": 3,
		"herald_messages_received_total":    5,
		"herald_messages_delivered_total":   10,
		"herald_subscriptions":              2,
		"herald_channels":                   1,
		"herald_write_queue_messages":       0,
		"herald_write_queue_bytes":          0,
		"herald_bus_connected":              1,
		"herald_write_queue_cap_bytes":      1 << 20, // the default
	}
	for name, want := range checks {
		if got := gwtest.Counter(t, g.reg, name); got != want {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}
	if got := gwtest.CounterWith(t, g.reg, "herald_messages_published_total", "source", "http"); got != 5 {
		t.Errorf("published{source=http}: got %v, want 5", got)
	}
	_, text := get("/metrics")
	for _, name := range []string{"herald_write_queue_max_bytes", "herald_messages_dropped_total", "herald_bus_connected"} {
		if !strings.Contains(text, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

func TestShutdownClosesWith1001(t *testing.T) {
	g := newTestGateway(t, gateway.Config{DrainBatch: 2, DrainInterval: time.Millisecond}, nil)
	var cs []*client
	for i := 0; i < 5; i++ {
		c := g.dial("")
		c.expect("welcome")
		cs = append(cs, c)
	}
	g.publish(testKey, `{"data":"before drain"}`)
	g.waitDispatched(0) // queued to every client before the drain starts
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	codes := make([]int, len(cs))
	for i, c := range cs {
		wg.Go(func() {
			c.expect("message") // queued before the drain, still delivered
			codes[i] = c.closeCode()
		})
	}
	if err := g.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	wg.Wait()
	for i, code := range codes {
		if code != websocket.CloseGoingAway {
			t.Errorf("client %d: got close %d, want 1001", i, code)
		}
	}
	if _, resp, err := g.tryDial(""); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial while draining: got %v, want HTTP 503", err)
	}
}

// TestStalledSocketDoesNotHoldTheWriter: with a single writer worker, a client that stops
// reading gets a writer goroutine of its own once its socket is full, and the worker goes
// on serving everyone else at once (were it to wait on the stalled socket, the healthy
// client would get nothing until the write timeout).
func TestStalledSocketDoesNotHoldTheWriter(t *testing.T) {
	g := newTestGateway(t, gateway.Config{
		WriteWorkers: 1, FlushInterval: -1, WriteQueueBytes: 64 << 20,
		SocketSendBuffer: 16 << 10, WriteTimeout: time.Minute,
	}, nil)
	stalled := g.dial("channels=s")
	stalled.expect("welcome")
	healthy := g.dial("channels=s")
	healthy.expect("welcome")

	payload := json.RawMessage(`"` + strings.Repeat("x", 8000) + `"`)
	const n = 600 // 4.8 MB: far more than the stalled client's socket buffers hold
	for i := 0; i < n; i++ {
		if _, err := g.bus.Publish(context.Background(), message.Message{Channel: "s", Data: payload}); err != nil {
			t.Fatal(err)
		}
		if off, _ := healthy.expect("message").num("offset"); off != int64(i) {
			t.Fatalf("healthy client got offset %d, want %d", off, i)
		}
	}
	// The stalled client's frames are waiting in its queue, not lost, and it was not
	// closed as slow.
	if q := gwtest.Counter(t, g.reg, "herald_write_queue_max_bytes"); q == 0 {
		t.Error("the stalled client's queue is empty: it never stalled")
	}
	if n := gwtest.Counter(t, g.reg, "herald_slow_consumers_total"); n != 0 {
		t.Errorf("got %v slow consumers, want 0", n)
	}
	// Once it reads, it gets everything, in order.
	for i := 0; i < n; i++ {
		if off, _ := stalled.expect("message").num("offset"); off != int64(i) {
			t.Fatalf("stalled client got offset %d, want %d", off, i)
		}
	}
	gwtest.WaitFor(t, "every delivery counted", func() bool {
		return gwtest.Counter(t, g.reg, "herald_messages_delivered_total") == 2*n
	})
}

// TestClientInfo: GET /ws/info tells a page, before it connects, whether it needs a
// token, whether ?user= names its user, and whether the backend API is on.
func TestClientInfo(t *testing.T) {
	tests := []struct {
		name string
		g    *testGateway
		want string
	}{
		{"the demo default", newTestGatewayNoKey(t), `{"auth":"off","user_param":false,"api":false}`},
		{"user param and an API key", newTestGateway(t, gateway.Config{InsecureUserParam: true}, nil), `{"auth":"off","user_param":true,"api":true}`},
		{"tokens required", newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: []byte("a-test-secret-of-at-least-32-bytes!!")}}, nil), `{"auth":"required","user_param":false,"api":true}`},
		{"tokens optional", newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: []byte("a-test-secret-of-at-least-32-bytes!!"), AllowAnonymous: true}}, nil), `{"auth":"optional","user_param":false,"api":true}`},
	}
	for _, tt := range tests {
		resp, err := http.Get(tt.g.http.URL + "/ws/info")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != tt.want {
			t.Errorf("%s: got %d %s, want 200 %s", tt.name, resp.StatusCode, body, tt.want)
		}
	}
}

// TestDirectMessagesSayDirect: a message that names users carries "direct": true, live
// and on replay, so that a client can tell it from a broadcast; the list of users is not
// sent. Others carry no direct.
func TestDirectMessagesSayDirect(t *testing.T) {
	g := newTestGatewayRetaining(t, gateway.Config{InsecureUserParam: true}, nil, consumer.EmbeddedConfig{RetainMessages: 50})
	alice := g.dial("user=alice&channels=news")
	alice.expect("welcome")
	mustPublish(t, g, `{"users":["alice","bob"],"data":"for you"}`)
	mustPublish(t, g, `{"data":"for all"}`)
	mustPublish(t, g, `{"channel":"news","data":"news"}`)
	mustPublish(t, g, `{"channel":"news","users":["alice"],"data":"news for you"}`)
	want := map[string]bool{"for you": true, "for all": false, "news": false, "news for you": true}
	check := func(who string, c *client) {
		for range want {
			f := c.expect("message")
			d, _ := f["data"].(string)
			if got := f["direct"] == true; got != want[d] {
				t.Errorf("%s: %v: direct %v, want %v", who, f, got, want[d])
			}
			if _, ok := f["users"]; ok {
				t.Errorf("%s: %v: the message lists its users", who, f)
			}
		}
	}
	check("live", alice)
	replay := g.dial("user=alice&channels=news&since=-1")
	replay.expect("welcome")
	check("replayed", replay)
}

// TestHTTPPublishRefusesOffsetIDs: an id of the form the log gives to messages published
// without one is refused with 400, so a chosen id never collides with a derived one.
func TestHTTPPublishRefusesOffsetIDs(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	if status, body := g.publish(testKey, `{"id":"offset-7","data":1}`); status != http.StatusBadRequest {
		t.Errorf("publish with id offset-7: got %d %v, want 400", status, body)
	}
	if status, body := g.publish(testKey, `{"id":"order-7","data":1}`); status != http.StatusAccepted || body["id"] != "order-7" {
		t.Errorf("publish with id order-7: got %d %v, want 202 with the id", status, body)
	}
}

// TestConnectionsWaitForTheLogStart: while the bus has not told the hub where its log
// stands (a RabbitMQ consumer still reading the stream's tail at start), /ws answers 503
// with Retry-After, so that no client gets a message published before it connected;
// then the first welcome carries the newest offset.
func TestConnectionsWaitForTheLogStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := gateway.NewMetrics(reg)
	hub := gateway.NewHub(gateway.HubConfig{Metrics: metrics, Logger: gwtest.Logger(t)})
	bus := consumer.NewEmbedded(consumer.EmbeddedConfig{}, hub)
	srv, err := gateway.NewServer(gateway.Config{Log: bus, Logger: gwtest.Logger(t), Metrics: metrics, Registry: reg},
		hub, bus, bus)
	if err != nil {
		t.Fatal(err)
	}
	g := &testGateway{t: t, srv: srv, reg: reg, bus: bus, hub: hub, http: httptest.NewServer(srv.Handler())}
	t.Cleanup(func() {
		// After the clients' cleanups: the connections end, and log, before the test does.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		g.http.Close()
	})

	// The warm-up: messages dispatched before the log start is known.
	for i := range 3 {
		hub.Dispatch(message.Message{ID: fmt.Sprint("old-", i), Offset: int64(i), Data: json.RawMessage(`1`)})
	}
	_, resp, err := g.tryDial("")
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("dial before the log start: got %v (response %v), want 503 with Retry-After", err, resp)
	}
	if n := gwtest.CounterWith(t, reg, "herald_handshakes_refused_total", "reason", "starting"); n != 1 {
		t.Errorf(`herald_handshakes_refused_total{reason="starting"}: got %v, want 1`, n)
	}
	if status, body := g.api(http.MethodGet, "", "/readyz", ""); status != http.StatusServiceUnavailable || body["status"] != "starting" {
		t.Errorf("/readyz before the log start: got %d %v, want 503 starting", status, body)
	}

	hub.SetLogStart(2)
	srv.SetBusReady(true)
	c := g.dial("")
	if w := c.expect("welcome"); w["offset"] != 2.0 {
		t.Errorf("welcome after the log start: got %v, want offset 2", w)
	}
	hub.Dispatch(message.Message{ID: "new", Offset: 3, Data: json.RawMessage(`1`)})
	if m := c.expect("message"); m["id"] != "new" {
		t.Errorf("first message: got %v, want the one after the log start", m)
	}
}
