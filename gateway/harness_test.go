package gateway_test

// The in-process harness of the gateway's tests: a gateway on the embedded bus (or a bus
// of the test's) served by httptest, real WebSocket clients, the backend API.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/producer/message"
)

const testKey = "test-api-key"

// testGateway is a gateway on the embedded bus, served by httptest.
type testGateway struct {
	t    *testing.T
	srv  *gateway.Server
	hub  *gateway.Hub
	http *httptest.Server
	reg  *prometheus.Registry
	bus  *consumer.Embedded // nil where the test gave its own publisher
}

// takingBus is a bus that takes every publish and is connected.
type takingBus struct{}

func (takingBus) Publish(_ context.Context, m message.Message) (string, error) { return m.ID, nil }
func (takingBus) Connected() bool                                              { return true }

// failingBus is a bus that takes nothing: for the gateway's answers to an unavailable bus.
type failingBus struct{}

func (failingBus) Publish(context.Context, message.Message) (string, error) {
	return "", errors.New("broker unreachable")
}
func (failingBus) Connected() bool { return false }

// newTestGateway starts a gateway on the embedded bus (or on pub, when not nil).
func newTestGateway(t *testing.T, cfg gateway.Config, pub gateway.Publisher) *testGateway {
	t.Helper()
	return newTestGatewayRetaining(t, cfg, pub, consumer.EmbeddedConfig{})
}

// newTestGatewayRetaining is newTestGateway with the embedded bus's retention set.
func newTestGatewayRetaining(t *testing.T, cfg gateway.Config, pub gateway.Publisher, ecfg consumer.EmbeddedConfig) *testGateway {
	t.Helper()
	return newTestGatewayTracing(t, cfg, pub, ecfg, 0)
}

// newTestGatewayTracing is newTestGatewayRetaining with a hub that keeps the traces of
// the newest traceDispatches messages (HubConfig.TraceDispatches).
func newTestGatewayTracing(t *testing.T, cfg gateway.Config, pub gateway.Publisher, ecfg consumer.EmbeddedConfig, traceDispatches int) *testGateway {
	t.Helper()
	reg := prometheus.NewRegistry()
	metrics := gateway.NewMetrics(reg)
	hub := gateway.NewHub(gateway.HubConfig{Metrics: metrics, Logger: gwtest.Logger(t), Presence: cfg.Presence,
		TailMessages: ecfg.RetainMessages, TailBytes: ecfg.RetainBytes, TraceDispatches: traceDispatches})
	g := &testGateway{t: t, reg: reg, hub: hub}
	if cfg.Presence != nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { cfg.Presence.Run(ctx, nil); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	var health gateway.BusHealth = failingBus{}
	if pub == nil {
		g.bus = consumer.NewEmbedded(ecfg, hub)
		if w, ok := cfg.Log.(interface{ wrap(gateway.Log) }); ok {
			w.wrap(g.bus) // a test's wrapper around the bus's log
		} else {
			cfg.Log = g.bus
		}
		hub.SetLogStart(g.bus.Newest())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = g.bus.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		pub, health = g.bus, g.bus
	}
	if cfg.APIKey == "" {
		cfg.APIKey = testKey
	}
	cfg.NodeID = "test-node"
	cfg.Logger = gwtest.Logger(t)
	cfg.Metrics = metrics
	cfg.Registry = reg
	srv, err := gateway.NewServer(cfg, hub, pub, health)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetBusReady(true)
	g.srv = srv
	g.http = httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		g.http.Close()
	})
	return g
}

// client is a real gorilla WebSocket client with frame helpers.
type client struct {
	t  *testing.T
	ws *websocket.Conn
}

func (g *testGateway) dial(query string) *client {
	g.t.Helper()
	c, resp, err := g.tryDial(query)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		g.t.Fatalf("dial ?%s: %v (HTTP %d)", query, err, status)
	}
	return c
}

func (g *testGateway) tryDial(query string) (*client, *http.Response, error) {
	u := "ws" + strings.TrimPrefix(g.http.URL, "http") + "/ws?" + query
	d := websocket.Dialer{Subprotocols: []string{gateway.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(u, nil)
	if err != nil {
		return nil, resp, err
	}
	c := &client{t: g.t, ws: ws}
	g.t.Cleanup(func() { ws.Close() })
	return c, resp, nil
}

// frame is a decoded frame from the gateway.
type frame map[string]any

func (f frame) str(k string) string { s, _ := f[k].(string); return s }
func (f frame) num(k string) (int64, bool) {
	v, ok := f[k].(float64)
	return int64(v), ok
}

// next reads the next frame, failing the test after a timeout.
func (c *client) next() frame {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	mt, data, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	if mt != websocket.TextMessage {
		c.t.Fatalf("got message type %d, want text", mt)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		c.t.Fatalf("frame %s is not a JSON object: %v", data, err)
	}
	return f
}

// expect reads the next frame and checks its op.
func (c *client) expect(op string) frame {
	c.t.Helper()
	f := c.next()
	if f.str("op") != op {
		c.t.Fatalf("got frame %v, want op %q", f, op)
	}
	return f
}

// quiet checks that no frame arrives for a moment.
func (c *client) quiet(d time.Duration) {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(d))
	_, data, err := c.ws.ReadMessage()
	if err == nil {
		c.t.Fatalf("got frame %s, want none", data)
	}
	var ne interface{ Timeout() bool }
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("got error %v, want a read timeout", err)
	}
}

func (c *client) send(v any) {
	c.t.Helper()
	var data []byte
	switch v := v.(type) {
	case string:
		data = []byte(v)
	default:
		var err error
		if data, err = json.Marshal(v); err != nil {
			c.t.Fatal(err)
		}
	}
	if err := c.ws.WriteMessage(websocket.TextMessage, data); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// closeCode reads until the connection closes and returns the close code.
func (c *client) closeCode() int {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := c.ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		c.t.Fatalf("read ended with %v, want a close frame", err)
	}
}

// publish posts to /api/publish and returns the status and decoded body.
func (g *testGateway) publish(key string, body string) (int, map[string]any) {
	g.t.Helper()
	return g.api(http.MethodPost, key, "/api/publish", body)
}

// api calls the backend API at path with the API key (when key is set) and returns the
// status and the decoded JSON body.
func (g *testGateway) api(method, key, path, body string) (int, map[string]any) {
	g.t.Helper()
	req, _ := http.NewRequest(method, g.http.URL+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &out); err != nil {
		g.t.Fatalf("%s %s answered %d with %q: not JSON", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode, out
}
