package gateway_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
)

// TestDebugDispatches: a hub that traces dispatches keeps the newest messages' stamps,
// and the admin listener serves them, oldest first, each with its recipients and its
// publish, dispatch, last enqueue and last write in that order; the public listener does
// not serve them, and a hub that does not trace serves nothing there.
func TestDebugDispatches(t *testing.T) {
	g := newTestGatewayTracing(t, gateway.Config{}, nil, consumer.EmbeddedConfig{}, 4)
	clients := []*client{g.dial("channels=m"), g.dial("channels=m"), g.dial("channels=m"), g.dial("")}
	for _, c := range clients {
		c.expect("welcome")
	}
	const n = 6
	for i := range n {
		if status, _ := g.publish(testKey, `{"id":"m`+strconv.Itoa(i)+`","channel":"m","data":1}`); status != http.StatusAccepted {
			t.Fatalf("publish %d: status %d", i, status)
		}
	}
	for _, c := range clients[:3] {
		for range n {
			c.expect("message")
		}
	}
	gwtest.WaitFor(t, "every traced message written to its last recipient", func() bool {
		ds := g.hub.Dispatches()
		return len(ds) == 4 && ds[3].Written >= ds[3].Enqueued && ds[3].Written > 0
	})

	rec := httptest.NewRecorder()
	g.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/dispatches", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("admin GET /debug/dispatches: status %d", rec.Code)
	}
	var body struct {
		Dispatches []gateway.DispatchTrace `json:"dispatches"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("decoding %s: %v", rec.Body, err)
	}
	if len(body.Dispatches) != 4 {
		t.Fatalf("got %d traces, want the newest 4: %+v", len(body.Dispatches), body.Dispatches)
	}
	for i, d := range body.Dispatches {
		if want := "m" + strconv.Itoa(n-4+i); d.ID != want {
			t.Errorf("trace %d: id %q, want %q (the newest, oldest first)", i, d.ID, want)
		}
		if d.Recipients != 3 {
			t.Errorf("trace %s: %d recipients, want 3", d.ID, d.Recipients)
		}
		if d.Published <= 0 || d.Published > d.Dispatched || d.Dispatched > d.Enqueued || d.Enqueued > d.Written {
			t.Errorf("trace %s: stamps out of order: %+v", d.ID, d)
		}
	}

	resp, err := http.Get(g.http.URL + "/debug/dispatches")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("public GET /debug/dispatches: status %d, want 404", resp.StatusCode)
	}

	off := newTestGateway(t, gateway.Config{}, nil)
	rec = httptest.NewRecorder()
	off.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/dispatches", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("admin GET /debug/dispatches without tracing: status %d, want 404", rec.Code)
	}
}
