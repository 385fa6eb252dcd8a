package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/producer/message"
)

// TestSubscribeWithHistory: subscribe with history: N answers subscribed (how many follow,
// and whether that is all the channel had), then the channel's newest N held messages
// that the subscriber may see (a message for other users is not), oldest first, then live
// ones, with no gap and no duplicate.
func TestSubscribeWithHistory(t *testing.T) {
	g := newTestGatewayRetaining(t, gateway.Config{InsecureUserParam: true}, nil, consumer.EmbeddedConfig{RetainMessages: 50})
	g.publishN(5, "room")                                  // 0..4
	g.publishN(3, "other")                                 // 5..7
	for _, users := range [][]string{{"bob"}, {"alice"}} { // 8: for bob, 9: for alice
		if _, err := g.bus.Publish(context.Background(), message.Message{Channel: "room", Users: users, Data: json.RawMessage(`"direct"`)}); err != nil {
			t.Fatal(err)
		}
	}
	g.publishN(1, "room") // 10
	g.waitDispatched(10)

	c := g.dial("user=alice")
	c.expect("welcome")
	c.send(map[string]any{"op": "subscribe", "channel": "room", "history": 4, "ref": "h"})
	f := c.expect("subscribed")
	if n, _ := f.num("history"); n != 4 || f["complete"] != true {
		t.Fatalf("got %v, want history 4, complete", f)
	}
	var offs []int64
	for range 4 {
		off, _ := c.expect("message").num("offset")
		offs = append(offs, off)
	}
	if want := []int64{3, 4, 9, 10}; !equalOffsets(offs, want) {
		t.Errorf("history %v, want %v", offs, want)
	}
	g.publishN(1, "room") // 11, live
	if off, _ := c.expect("message").num("offset"); off != 11 {
		t.Errorf("live offset %d, want 11", off)
	}

	// More than the channel ever had, from a tail that holds all of it: complete.
	a := g.dial("")
	a.expect("welcome")
	a.send(map[string]any{"op": "subscribe", "channel": "room", "history": 50})
	f = a.expect("subscribed")
	if n, _ := f.num("history"); n != 7 || f["complete"] != true { // 0..4, 10, 11
		t.Fatalf("got %v, want history 7, complete", f)
	}

	// The API: the same from memory, as JSON; limit and since.
	status, body := g.api(http.MethodGet, testKey, "/api/history?channel=room&limit=2", "")
	msgs, _ := body["messages"].([]any)
	if status != http.StatusOK || len(msgs) != 2 || body["complete"] != true {
		t.Fatalf("GET /api/history: %d %v", status, body)
	}
	if off := msgs[0].(map[string]any)["offset"]; off != float64(10) {
		t.Errorf("first message %v, want offset 10", msgs[0])
	}
	status, body = g.api(http.MethodGet, testKey, "/api/history?channel=room&since=3", "")
	if msgs, _ := body["messages"].([]any); status != http.StatusOK || len(msgs) != 3 { // 4, 10, 11
		t.Errorf("since=3: %d %v", status, body)
	}
	for _, q := range []string{"channel=", "channel=room&limit=0", "channel=room&since=x"} {
		if status, _ := g.api(http.MethodGet, testKey, "/api/history?"+q, ""); status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", q, status)
		}
	}
	if status, _ := g.api(http.MethodGet, "", "/api/history?channel=room", ""); status != http.StatusUnauthorized {
		t.Errorf("no key: status %d, want 401", status)
	}

	// The tail holds 50 messages: after 60 more, the oldest of room's are gone.
	g.publishN(60, "x")
	g.waitDispatched(71)
	b := g.dial("")
	b.expect("welcome")
	b.send(map[string]any{"op": "subscribe", "channel": "room", "history": 10})
	if f := b.expect("subscribed"); f["complete"] != false {
		t.Errorf("got %v, want complete false", f)
	}
	b.send(map[string]any{"op": "subscribe", "channel": "room2", "history": 10, "since": 3, "ref": "x"})
	if f := b.expect("error"); f.str("code") != gateway.CodeBadRequest {
		t.Errorf("history with since: %v", f)
	}
}
