package gateway_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/producer/message"
)

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
	hub := gateway.NewHub(gateway.HubConfig{Metrics: metrics, Logger: testLogger(t)})
	bus := consumer.NewEmbedded(consumer.EmbeddedConfig{}, hub)
	srv, err := gateway.NewServer(gateway.Config{Log: bus, Logger: testLogger(t), Metrics: metrics, Registry: reg},
		hub, bus, bus)
	if err != nil {
		t.Fatal(err)
	}
	g := &testGateway{t: t, srv: srv, reg: reg, bus: bus, http: httptest.NewServer(srv.Handler())}
	t.Cleanup(g.http.Close)

	// The warm-up: messages dispatched before the log start is known.
	for i := range 3 {
		hub.Dispatch(message.Message{ID: fmt.Sprint("old-", i), Offset: int64(i), Data: json.RawMessage(`1`)})
	}
	_, resp, err := g.tryDial("")
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("dial before the log start: got %v (response %v), want 503 with Retry-After", err, resp)
	}
	if n := counterWith(t, reg, "herald_handshakes_refused_total", "reason", "starting"); n != 1 {
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
