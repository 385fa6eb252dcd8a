package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/amqptest"
)

// The tests here hold the gateways to the contract with AMQP publishers that Herald did
// not write (PROTOCOL.md section 3): what a plain AMQP client publishes reaches clients the
// same way on every gateway and on replay.

// rawClient is a WebSocket client that keeps every frame as it came.
type rawClient struct {
	t    *testing.T
	name string
	ws   *websocket.Conn
}

// dialRaw connects to p with query and returns the client and its welcome frame.
func dialRaw(t *testing.T, p *proc, name, query string) (*rawClient, map[string]any) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial("ws://"+p.addr+"/ws?"+query, nil)
	if err != nil {
		t.Fatalf("client %s: dial %s: %v (response %v)", name, p.name, err, resp)
	}
	t.Cleanup(func() { _ = ws.Close() })
	c := &rawClient{t: t, name: name, ws: ws}
	w := c.next()
	if w["op"] != "welcome" {
		t.Fatalf("client %s: first frame %v, want welcome", name, w)
	}
	return c, w
}

// next returns the next frame, failing the test after 10s.
func (c *rawClient) next() map[string]any {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f map[string]any
	if err := c.ws.ReadJSON(&f); err != nil {
		c.t.Fatalf("client %s: read: %v", c.name, err)
	}
	return f
}

// messages reads frames until it has n messages and returns them; other frames are
// skipped, except that until, when not empty, must come after the messages.
func (c *rawClient) messages(n int, until string) []map[string]any {
	c.t.Helper()
	var out []map[string]any
	for len(out) < n || until != "" {
		f := c.next()
		switch {
		case f["op"] == "message":
			if len(out) == n {
				c.t.Fatalf("client %s: message %v after the %d expected, before %s", c.name, f, n, until)
			}
			out = append(out, f)
		case f["op"] == until:
			if len(out) < n {
				c.t.Fatalf("client %s: %s after %d messages, want %d", c.name, until, len(out), n)
			}
			until = ""
		}
	}
	return out
}

// rawPublish publishes ps to exchange as a plain AMQP client does, and waits for the
// broker's confirms.
func rawPublish(t *testing.T, url, exchange string, ps ...amqp.Publishing) {
	t.Helper()
	ch := amqptest.Channel(t, url)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, p := range ps {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, "", false, false, p)
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish %d: confirm %v %v", i, ok, err)
		}
	}
}

// scrapeMetric returns the value of one series (as exposed: `name{label="value"}`) on p's
// /metrics, and false when p does not export it.
func scrapeMetric(t *testing.T, p *proc, series string) (float64, bool) {
	t.Helper()
	resp, err := http.Get(p.url("/metrics"))
	if err != nil {
		t.Fatalf("scrape %s: %v", p.name, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

// TestForeignAMQPPublisherOnTwoGateways: messages from a plain AMQP client (no message id,
// no time, headers Herald cannot read) reach the clients of two gateways, and a replay,
// alike: the id derived from the offset, no time made up, an unreadable optional header
// left out, and a message whose users cannot be read delivered to nobody; each counted.
func TestForeignAMQPPublisherOnTwoGateways(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	a := startGateway(t, "gw-a", url, exchange, stream)
	b := startGateway(t, "gw-b", url, exchange, stream)
	alice, _ := dialRaw(t, a, "alice@a", "user=alice&channels=room")
	bob, _ := dialRaw(t, b, "bob@b", "user=bob&channels=room")
	carol, _ := dialRaw(t, a, "carol@a", "channels=room")

	room := amqp.Table{"channel": "room"}
	rawPublish(t, url, exchange,
		amqp.Publishing{Body: []byte(`{"n":0}`), Headers: room},
		amqp.Publishing{MessageId: "bad-optional", Body: []byte(`{"n":1}`),
			Headers: amqp.Table{"channel": "room", "time": "yesterday", "from": int32(5)}},
		// users that is not a JSON array: not to everyone on room, to nobody.
		amqp.Publishing{Body: []byte(`{"n":2}`), Headers: amqp.Table{"channel": "room", "users": "alice"}},
		amqp.Publishing{Body: []byte(`{"n":3}`), Headers: amqp.Table{"channel": "room", "users": `["alice"]`}},
		amqp.Publishing{Body: []byte(`{"n":4}`), Headers: room},
	)

	got := map[string][]map[string]any{
		"alice@a": alice.messages(4, ""),
		"bob@b":   bob.messages(3, ""),
		"carol@a": carol.messages(3, ""),
	}
	first := int64(got["alice@a"][0]["offset"].(float64))
	// A client on gw-b that resumes from before the first: the same messages, replayed.
	replay, _ := dialRaw(t, b, "alice-replay@b", fmt.Sprintf("user=alice&channels=room&since=%d", first-1))
	got["alice-replay@b"] = replay.messages(4, "resumed")

	want := map[string][]int{ // the n of the messages each gets
		"alice@a": {0, 1, 3, 4}, "alice-replay@b": {0, 1, 3, 4}, "bob@b": {0, 1, 4}, "carol@a": {0, 1, 4},
	}
	ids := map[int]string{}
	for name, frames := range got {
		for i, f := range frames {
			n := want[name][i]
			var data struct{ N int }
			if b, _ := json.Marshal(f["data"]); json.Unmarshal(b, &data) != nil || data.N != n {
				t.Errorf("%s: message %d: got %v, want n=%d", name, i, f, n)
				continue
			}
			id, _ := f["id"].(string)
			if id == "" {
				t.Errorf("%s: n=%d: no id: %v", name, n, f)
			}
			if prev, ok := ids[n]; ok && prev != id {
				t.Errorf("%s: n=%d: id %q, another client got %q", name, n, id, prev)
			}
			ids[n] = id
			if _, has := f["time"]; has {
				t.Errorf("%s: n=%d: time %v, want none (the publisher gave none)", name, n, f["time"])
			}
			if _, has := f["from"]; has {
				t.Errorf("%s: n=%d: from %v, want none", name, n, f["from"])
			}
		}
	}
	if want := fmt.Sprintf("offset-%d", first); ids[0] != want {
		t.Errorf("id of the message published without one: got %q, want %q", ids[0], want)
	}
	if ids[1] != "bad-optional" {
		t.Errorf("id of the message with bad optional headers: got %q, want bad-optional", ids[1])
	}
	for _, p := range []*proc{a, b} {
		for series, want := range map[string]float64{
			`herald_bus_header_errors_total{header="time"}`:            1,
			`herald_bus_header_errors_total{header="from"}`:            1,
			`herald_bus_header_errors_total{header="users"}`:           1,
			`herald_messages_dropped_total{reason="unroutable"}`:       1,
			`herald_messages_dropped_total{reason="undecodable"}`:      0,
			`herald_bus_header_errors_total{header="channel"}`:         0,
			`herald_messages_received_total{source="amqp"}`:            4,
			`herald_bus_header_errors_total{header="x-stream-offset"}`: 0,
		} {
			if got, ok := scrapeMetric(t, p, series); !ok || got != want {
				t.Errorf("%s: %s = %v (exported %v), want %v", p.name, series, got, ok, want)
			}
		}
	}
}
