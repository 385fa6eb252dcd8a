package gateway_test

import (
	"net/http"
	"testing"

	"github.com/heraldgw/herald/gateway"
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
