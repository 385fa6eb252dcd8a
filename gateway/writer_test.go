package gateway

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/gateway/internal/wire"
)

// TestPanicInAWriterWorker: a panic during a worker's turn at one connection (here, its
// compressor is broken) ends that connection only; the worker goes on writing for the
// others.
func TestPanicInAWriterWorker(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	hub := NewHub(HubConfig{Metrics: metrics})
	s, err := NewServer(Config{WriteWorkers: 1, Compression: true, Metrics: metrics, Registry: reg}, hub, benchBus{}, benchBus{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	}()
	d := websocket.Dialer{EnableCompression: true, HandshakeTimeout: 5 * time.Second}
	dial := func() *websocket.Conn {
		ws, _, err := d.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/ws?channels=c", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := ws.ReadMessage(); err != nil { // welcome
			t.Fatal(err)
		}
		return ws
	}
	victim := dial()
	defer victim.Close()
	s.connsMu.Lock()
	for c := range s.all {
		c.mu.Lock()
		c.deflate = wire.NewDeflater(0, 42, nil) // flate refuses the level: compressing panics
		c.mu.Unlock()
	}
	s.connsMu.Unlock()
	other := dial()
	defer other.Close()

	for i := range 3 {
		hub.Dispatch(msg(int64(i), "c"))
		_ = other.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := other.ReadMessage(); err != nil {
			t.Fatalf("the other client, message %d: %v", i, err)
		}
	}
	_ = victim.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := victim.ReadMessage(); err == nil {
		t.Error("the connection whose write panicked got a message, want it closed")
	}
	if got := gwtest.Counter(t, reg, "herald_panics_total"); got != 1 {
		t.Errorf("panics: got %v, want 1", got)
	}
}
