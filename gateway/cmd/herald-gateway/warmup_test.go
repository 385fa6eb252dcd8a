package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/producer/amqptest"
	"github.com/heraldgw/herald/producer/message"
)

// TestWelcomeOffsetAtStartOnRabbitMQ: a gateway that has just started on a stream that
// holds messages says in its first welcome where the stream stands (and -1 on an empty
// stream), and that offset is a since from which a client resumes with nothing missed.
func TestWelcomeOffsetAtStartOnRabbitMQ(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	a := startGateway(t, "gw-a", url, exchange, stream)
	watcher, w := dialRaw(t, a, "watcher@a", "channels=c")
	if w["offset"] != -1.0 {
		t.Fatalf("welcome on an empty stream: got %v, want offset -1", w)
	}
	const n = 50
	for i := range n {
		if _, status, err := httpPublish(a, fmt.Sprintf(`{"channel":"c","data":%d}`, i)); err != nil || status != http.StatusAccepted {
			t.Fatalf("publish %d: %d %v", i, status, err)
		}
	}
	got := watcher.messages(n, "")
	newest := got[n-1]["offset"].(float64)

	// A gateway started now: its first welcome, with no since, has the newest offset.
	b := startGateway(t, "gw-b", url, exchange, stream)
	fresh, w := dialRaw(t, b, "fresh@b", "channels=c")
	if w["offset"] != newest {
		t.Fatalf("welcome on a gateway just started: got %v, want offset %v", w, newest)
	}
	// Resuming from it: nothing to replay. From ten before it: those ten.
	resumer, _ := dialRaw(t, b, "resumer@b", fmt.Sprintf("channels=c&since=%d", int64(newest)))
	if f := resumer.next(); f["op"] != "resumed" || f["until"] != newest {
		t.Fatalf("resume from the welcome's offset: got %v, want resumed until %v", f, newest)
	}
	back, _ := dialRaw(t, b, "back@b", fmt.Sprintf("channels=c&since=%d", int64(got[n-11]["offset"].(float64))))
	replayed := back.messages(10, "resumed")
	for i, m := range replayed {
		if m["offset"] != got[n-10+i]["offset"] || m["id"] != got[n-10+i]["id"] {
			t.Errorf("replayed %d: got %v, want %v", i, m, got[n-10+i])
		}
	}
	// Then live, on every client: only what comes next, each once.
	var next []string
	for i := range 5 {
		id, status, err := httpPublish(a, fmt.Sprintf(`{"channel":"c","data":"next %d"}`, i))
		if err != nil || status != http.StatusAccepted {
			t.Fatalf("publish next %d: %d %v", i, status, err)
		}
		next = append(next, id)
	}
	for _, c := range []*rawClient{fresh, resumer, back} {
		for i, m := range c.messages(5, "") {
			if m["id"] != next[i] || m["offset"].(float64) <= newest {
				t.Errorf("client %s: message %d: got %v, want %s after offset %v", c.name, i, m, next[i], newest)
			}
		}
	}
}

// slowHub dispatches to a hub, each message after a pause: a warm-up that takes long
// enough for clients to try to connect in the middle of it.
type slowHub struct {
	*gateway.Hub
	pause time.Duration
}

func (h slowHub) Dispatch(m message.Message) {
	time.Sleep(h.pause)
	h.Hub.Dispatch(m)
}

type noPublisher struct{}

func (noPublisher) Publish(context.Context, message.Message) (string, error) {
	return "", errors.New("not in this test")
}

// TestNoClientGetsWarmUpMessages wires a gateway as main does (streamConfig) on a stream
// of 300 messages, read from its first message and slowly, while a client tries to
// connect every few milliseconds: each try before the warm-up is over is refused with 503
// and Retry-After, and the first admitted client's welcome has the newest offset and it
// then gets only the messages published after.
func TestNoClientGetsWarmUpMessages(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	cfg, err := parseConfig([]string{"--amqp-url", url, "--exchange", exchange, "--stream", stream,
		"--stream-max-bytes", "104857600", "--node-id", "warm-up-test"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	var old []amqp.Publishing
	for i := range n {
		old = append(old, amqp.Publishing{Body: []byte(fmt.Sprint(i))})
	}
	ch := amqptest.Channel(t, url)
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// The stream as the gateway declares it, bound, so that it keeps what is published now.
	scfg := streamConfig(cfg, slog.New(slog.DiscardHandler), nil, nil, nil, gateway.NewHub(gateway.HubConfig{}))
	setup := consumer.NewStream(scfg, gateway.NewHub(gateway.HubConfig{}))
	setupCtx, stopSetup := context.WithCancel(context.Background())
	setupDone := make(chan error, 1)
	go func() { setupDone <- setup.Run(setupCtx) }()
	<-setup.Ready()
	stopSetup()
	if err := <-setupDone; err != nil {
		t.Fatal(err)
	}
	rawPublish(t, url, exchange, old...)

	reg := prometheus.NewRegistry()
	metrics := gateway.NewMetrics(reg)
	hub := gateway.NewHub(gateway.HubConfig{Metrics: metrics})
	scfg = streamConfig(cfg, slog.New(slog.DiscardHandler), metrics, nil, nil, hub)
	scfg.Start = "first" // all 300, at 2ms each: a warm-up of more than half a second
	s := consumer.NewStream(scfg, slowHub{Hub: hub, pause: 2 * time.Millisecond})
	// The test dials as fast as it is refused: no handshake rate limit.
	srv, err := gateway.NewServer(gateway.Config{Log: s, Metrics: metrics, Registry: reg,
		Limits: gateway.Limits{HandshakeRate: -1}}, hub, noPublisher{}, s)
	if err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(srv.Handler())
	defer web.Close()
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	refused := 0
	var ws *websocket.Conn
	deadline := time.Now().Add(20 * time.Second)
	for ws == nil {
		c, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(web.URL, "http")+"/ws", nil)
		switch {
		case err == nil:
			ws = c
		case resp != nil && resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
			refused++
		default:
			t.Fatalf("dial during the warm-up: %v (response %v), want 503 with Retry-After", err, resp)
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection admitted within 20s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	defer ws.Close()
	if refused == 0 {
		// The warm-up dispatches 300 messages at 2ms each: the first try comes during it.
		t.Fatal("the first try, during the warm-up, was admitted: want 503 until the warm-up is over")
	}
	var f map[string]any
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := ws.ReadJSON(&f); err != nil || f["op"] != "welcome" || f["offset"] != float64(n-1) {
		t.Fatalf("first frame: got %v (%v), want welcome with offset %d", f, err, n-1)
	}
	rawPublish(t, url, exchange, amqp.Publishing{MessageId: "after", Body: []byte(`"after"`)})
	if err := ws.ReadJSON(&f); err != nil || f["op"] != "message" || f["id"] != "after" {
		t.Fatalf("first message: got %v (%v), want the one published after the client connected", f, err)
	}
	var data string
	if b, _ := json.Marshal(f["data"]); json.Unmarshal(b, &data) != nil || data != "after" {
		t.Errorf("first message data: got %v, want after", f["data"])
	}
	t.Logf("%d tries refused during the warm-up", refused)
}
