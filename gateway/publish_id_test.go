package gateway_test

import (
	"testing"

	"github.com/heraldgw/herald/gateway"
)

// TestClientPublishWithID: a WebSocket client may give its message an id, as the HTTP API
// takes one, so that a publish answered unavailable (the bus may have taken it before its
// node died) can be retried safely: a repeated id is delivered once, and acked with the id.
func TestClientPublishWithID(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	pub := g.dial("")
	pub.expect("welcome")
	sub := g.dial("")
	sub.expect("welcome")
	for i, ref := range []string{"a", "b"} {
		pub.send(map[string]any{"op": "publish", "id": "retry-7", "data": 7, "ref": ref})
		for {
			f := pub.next()
			if f.str("op") == "message" {
				continue // its own copy
			}
			if f.str("op") != "ack" || f.str("id") != "retry-7" || f.str("ref") != ref {
				t.Fatalf("publish %d: got %v, want ack of id retry-7", i, f)
			}
			break
		}
	}
	pub.send(map[string]any{"op": "publish", "data": 8, "ref": "c"})
	if f := sub.expect("message"); f.str("id") != "retry-7" {
		t.Fatalf("got %v, want retry-7", f)
	}
	if f := sub.expect("message"); f.str("id") == "retry-7" || f.str("id") == "" {
		t.Fatalf("got %v, want the next message with a generated id (the repeat dropped)", f)
	}
	pub.send(map[string]any{"op": "publish", "id": "offset-12", "data": 9, "ref": "d"})
	for {
		f := pub.next()
		if f.str("op") == "message" || f.str("ref") == "c" {
			continue
		}
		if f.str("op") != "error" || f.str("code") != "bad_request" || f.str("ref") != "d" {
			t.Fatalf("publish with a reserved id: got %v, want error bad_request", f)
		}
		break
	}
}
