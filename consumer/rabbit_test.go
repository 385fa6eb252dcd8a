package consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/amqptest"
	"github.com/heraldgw/herald/producer/message"
)

// logBuffer is a slog handler's output that the test reads, and that goes to the test
// log too. mu protects buf.
type logBuffer struct {
	t   *testing.T
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.t.Log(strings.TrimSuffix(string(p), "\n"))
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogBuffer(t *testing.T) (*logBuffer, *slog.Logger) {
	b := &logBuffer{t: t}
	return b, slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitUntil polls cond every 20ms until it holds, failing the test after within.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// TestRabbitCanarySeesAStalledPath: with every connection up, a stream unbound from the
// exchange stops the canaries; the bus turns unusable within the timeout, says why, and
// recovers by itself (it declares the binding again). Canaries are never dispatched.
func TestRabbitCanarySeesAStalledPath(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	var stalls, back atomic.Int32
	rec := newStreamRecorder()
	const timeout = 2 * time.Second
	r, err := NewRabbit(t.Context(), RabbitConfig{
		Stream:         streamTestConfig(t, url, exchange, stream),
		Node:           "test",
		Logger:         testLogger(t),
		CanaryInterval: 250 * time.Millisecond,
		CanaryTimeout:  timeout,
		OnCanary:       func(time.Duration) { back.Add(1) },
		OnStall:        func() { stalls.Add(1) },
	}, rec)
	if err != nil {
		t.Fatal(err)
	}
	stop, _ := testRun(t, r.Run)
	t.Cleanup(func() {
		_ = stop()
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	waitUntil(t, 10*time.Second, "a canary back", func() bool { _, ok := r.LastCanary(); return ok })
	if ok, reason := r.Health(); !ok {
		t.Fatalf("Health with canaries coming back: got false (%s), want true", reason)
	}

	ch := amqptest.Channel(t, url)
	if err := ch.QueueUnbind(stream, "", exchange, nil); err != nil {
		t.Fatalf("unbind: %v", err)
	}
	unbound := time.Now()
	took := waitUntil(t, timeout+3*time.Second, "the bus unusable after the unbind", func() bool { return !r.Connected() })
	t.Logf("unusable %v after the unbind (timeout %v)", took.Round(time.Millisecond), timeout)
	if _, reason := r.Health(); !strings.Contains(reason, "no canary came back") {
		t.Errorf("Health reason: got %q, want it to say no canary came back", reason)
	}
	if stalls.Load() == 0 {
		t.Errorf("OnStall: not called")
	}
	took = waitUntil(t, 15*time.Second, "the bus usable again by itself", r.Connected)
	t.Logf("usable again %v after the stall was seen (%v after the unbind)", took.Round(time.Millisecond), time.Since(unbound).Round(time.Millisecond))

	// A message goes round again, and no canary was ever dispatched.
	m := message.Message{Data: json.RawMessage(`"after"`)}
	if _, err := r.Publish(t.Context(), m); err != nil {
		t.Fatalf("Publish after the recovery: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for _, got := range rec.waitFor(ctx, t, 1) {
		if string(got.Data) != `"after"` {
			t.Errorf("dispatched %s, want only the message published", got.Data)
		}
	}
	if back.Load() < 2 {
		t.Errorf("canaries back: got %d, want several", back.Load())
	}
}

// TestStreamSkipsControlMessages: a delivery with the control header goes to OnControl,
// never to the dispatcher, and a replay sees its offset without data.
func TestStreamSkipsControlMessages(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	rec := newStreamRecorder()
	cfg := streamTestConfig(t, url, exchange, stream)
	var mu sync.Mutex
	var controls []string
	cfg.OnControl = func(kind string, body []byte) {
		mu.Lock()
		controls = append(controls, kind+" "+string(body))
		mu.Unlock()
	}
	s := NewStream(cfg, rec)
	testRun(t, s.Run)
	streamWaitReady(t, s)
	ms := streamMessages(0, 2)
	pub := newStreamPublisher(t, url, exchange)
	pub.publish(producer.Encode(ms[0]),
		amqp.Publishing{Headers: amqp.Table{producer.HeaderControl: "canary"}, Body: []byte(`{"seq":1}`)},
		amqp.Publishing{Headers: amqp.Table{producer.HeaderControl: "future-kind"}, Body: []byte(`not json`)},
		producer.Encode(ms[1]))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	got := rec.waitFor(ctx, t, 2)
	time.Sleep(200 * time.Millisecond)
	got = rec.snapshot()
	if len(got) != 2 || got[0].ID != ms[0].ID || got[1].ID != ms[1].ID {
		t.Fatalf("dispatched %d messages (%v), want the 2 Herald messages only", len(got), got)
	}
	if got[1].Offset != got[0].Offset+3 {
		t.Errorf("offsets %d, %d: want the two control messages between", got[0].Offset, got[1].Offset)
	}
	mu.Lock()
	if want := `[canary {"seq":1} future-kind not json]`; strings.Join(controls, " ") != strings.Trim(want, "[]") {
		t.Errorf("OnControl calls: got %q, want %s", controls, want)
	}
	mu.Unlock()
	if pos, ok := s.Position(); !ok || pos != got[1].Offset {
		t.Errorf("Position: got %d, %v; want %d", pos, ok, got[1].Offset)
	}

	var replayed []message.Message
	err := s.Replay(ctx, got[0].Offset-1, func(m message.Message) bool {
		replayed = append(replayed, m)
		return m.Offset < got[1].Offset
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(replayed) != 4 || replayed[1].Data != nil || replayed[2].Data != nil || replayed[3].ID != ms[1].ID {
		t.Errorf("replay: got %v, want the message, two control messages without data, the message", replayed)
	}
}

// TestStreamUsesAnExistingStreamAsItIs: a stream declared before with other arguments is
// consumed as it is (no crash loop on PRECONDITION_FAILED), and one log line names each
// argument that differs and how to change it.
func TestStreamUsesAnExistingStreamAsItIs(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	ch := amqptest.Channel(t, url)
	if _, err := ch.QueueDeclare(stream, true, false, false, false, amqp.Table{
		"x-queue-type": "stream", "x-max-age": "60s", "x-queue-leader-locator": "client-local"}); err != nil {
		t.Fatalf("declare stream: %v", err)
	}
	logs, log := newLogBuffer(t)
	cfg := streamTestConfig(t, url, exchange, stream)
	cfg.Logger = log
	rec := newStreamRecorder()
	s := NewStream(cfg, rec)
	testRun(t, s.Run)
	streamWaitReady(t, s)
	ms := streamMessages(0, 1)
	newStreamPublisher(t, url, exchange).publish(producer.Encode(ms[0]))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	rec.waitFor(ctx, t, 1)

	var line string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "exists with other arguments") {
			if line != "" {
				t.Errorf("the differences are logged more than once")
			}
			line = l
		}
	}
	for _, want := range []string{"x-max-age: configured 3600s, the stream has 60s",
		"x-initial-cluster-size: configured 3, the stream has none", "x-queue-leader-locator: configured balanced, the stream has client-local",
		"x-max-length-bytes: configured 67108864, the stream has none", "rabbitmq-streams add_replica", "rabbitmqctl set_policy"} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %q", line, want)
		}
	}
}

func TestArgTyped(t *testing.T) {
	for _, tt := range []struct {
		text, typ  string
		configured any
		want       any
	}{
		{"10s", "", "20s", "10s"},
		{"1", "", int64(3), int64(1)},
		{"1", "signedint", nil, int32(1)},
		{"1000", "long", nil, int64(1000)},
		{"client-local", "longstr", nil, "client-local"},
	} {
		if got, ok := argTyped(tt.text, tt.typ, tt.configured); !ok || got != tt.want {
			t.Errorf("argTyped(%q, %q): got %v (%T), %v; want %v (%T)", tt.text, tt.typ, got, got, ok, tt.want, tt.want)
		}
	}
	if _, ok := argTyped("x", "table", nil); ok {
		t.Errorf("argTyped of a table: got ok, want false")
	}
}
