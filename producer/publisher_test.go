package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/amqptest"
	"github.com/heraldgw/herald/producer/message"
)

// testWriter sends what is written to it to t.Log, one call per write.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newPublisher connects a Publisher to exchange, closing it when the test ends.
func newPublisher(t *testing.T, url, exchange string, configure ...func(*Config)) *Publisher {
	t.Helper()
	cfg := Config{URL: url, Exchange: exchange, Logger: testLogger(t)}
	for _, f := range configure {
		f(&cfg)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	p, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: got %v, want nil", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: got %v, want nil", err)
		}
	})
	return p
}

// receive returns the next n deliveries, failing the test when they do not come
// within timeout.
func receive(t *testing.T, deliveries <-chan amqp.Delivery, n int, timeout time.Duration) []amqp.Delivery {
	t.Helper()
	deadline := time.After(timeout)
	out := make([]amqp.Delivery, 0, n)
	for len(out) < n {
		select {
		case d, ok := <-deliveries:
			if !ok {
				t.Fatalf("deliveries closed after %d of %d", len(out), n)
			}
			out = append(out, d)
		case <-deadline:
			t.Fatalf("received %d deliveries in %v, want %d", len(out), timeout, n)
		}
	}
	return out
}

// expectNothing fails the test if a delivery arrives within wait.
func expectNothing(t *testing.T, deliveries <-chan amqp.Delivery, wait time.Duration) {
	t.Helper()
	select {
	case d := <-deliveries:
		t.Errorf("got an unexpected delivery %q, want none", d.MessageId)
	case <-time.After(wait):
	}
}

// checkGoroutines fails the test if, once its cleanups (Close among them) have run,
// more goroutines run than when it started. Call it first, so its cleanup runs last.
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines after the test: got %d, want at most %d\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func publishCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPublishDelivers(t *testing.T) {
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	deliveries := amqptest.BindQueue(t, url, exchange, nil)
	p := newPublisher(t, url, exchange)

	when := time.Date(2025, 1, 2, 3, 4, 5, 600000000, time.UTC)
	tests := []struct {
		name string
		m    Message
	}{
		{"broadcast with generated id", Message{Data: json.RawMessage(`{"hello":"world"}`)}},
		{"channel with id", Message{ID: "order-17", Channel: "orders:eu", Data: json.RawMessage(`[1,2]`)}},
		{"users and from", Message{Users: []string{"alice", "bob"}, From: "carol", Data: json.RawMessage(`"hi"`)}},
		{"given time", Message{ID: "t-1", Time: when, Data: json.RawMessage(`42`)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now()
			id, err := p.Publish(publishCtx(t), tc.m)
			if err != nil {
				t.Fatalf("Publish: got %v, want nil", err)
			}
			switch {
			case tc.m.ID != "" && id != tc.m.ID:
				t.Errorf("Publish id: got %q, want %q", id, tc.m.ID)
			case tc.m.ID == "" && len(id) != 32:
				t.Errorf("Publish id: got %q, want a generated 32-digit hex id", id)
			}
			d := receive(t, deliveries, 1, 5*time.Second)[0]
			if d.MessageId != id {
				t.Errorf("message_id: got %q, want %q", d.MessageId, id)
			}
			if d.ContentType != ContentType {
				t.Errorf("content_type: got %q, want %q", d.ContentType, ContentType)
			}
			if d.DeliveryMode != amqp.Persistent {
				t.Errorf("delivery_mode: got %d, want %d", d.DeliveryMode, amqp.Persistent)
			}
			if string(d.Body) != string(tc.m.Data) {
				t.Errorf("body: got %s, want %s", d.Body, tc.m.Data)
			}
			for h, want := range map[string]bool{HeaderChannel: tc.m.Channel != "", HeaderUsers: len(tc.m.Users) > 0, HeaderFrom: tc.m.From != "", HeaderTime: true} {
				if _, got := d.Headers[h]; got != want {
					t.Errorf("header %s present: got %v, want %v", h, got, want)
				}
			}
			got, skipped, err := Decode(d)
			if err != nil || len(skipped) > 0 {
				t.Fatalf("Decode: got %v (headers left out: %v), want nil", err, skipped)
			}
			want := tc.m
			want.ID, want.Offset = id, message.NoOffset
			if want.Time.IsZero() {
				// Filled by Publish: check it is now, then compare the rest.
				if got.Time.Before(before) || got.Time.After(time.Now()) {
					t.Errorf("time: got %v, want between %v and now", got.Time, before)
				}
				want.Time = got.Time
			}
			if d := diffMessage(got, want); d != "" {
				t.Error(d)
			}
			if got, want := d.Timestamp.Unix(), want.Time.Unix(); got != want {
				t.Errorf("timestamp property: got %d, want %d", got, want)
			}
		})
	}
}

func TestPublishInvalid(t *testing.T) {
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	deliveries := amqptest.BindQueue(t, url, exchange, nil)
	p := newPublisher(t, url, exchange)

	data := json.RawMessage(`{}`)
	tests := []struct {
		name string
		m    Message
		want error
	}{
		{"bad channel", Message{Channel: "has space", Data: data}, message.ErrBadChannel},
		{"channel too long", Message{Channel: strings.Repeat("c", message.MaxChannelLen+1), Data: data}, message.ErrBadChannel},
		{"empty user", Message{Users: []string{"alice", ""}, Data: data}, message.ErrBadUser},
		{"no data", Message{Channel: "c"}, message.ErrNoData},
		{"data not JSON", Message{Data: json.RawMessage(`{"a":`)}, message.ErrBadData},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := p.Publish(publishCtx(t), tc.m)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Publish: got %v, want an error wrapping %v", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "producer: publish ") {
				t.Errorf("Publish error: got %q, want it to start with %q", err, "producer: publish ")
			}
			if id == "" {
				t.Errorf("Publish id: got empty, want the id the message would have had")
			}
		})
	}
	expectNothing(t, deliveries, 100*time.Millisecond)
}

func TestPublishUnroutable(t *testing.T) {
	checkGoroutines(t)
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	p := newPublisher(t, url, exchange)

	id, err := p.Publish(publishCtx(t), Message{ID: "lost", Data: json.RawMessage(`1`)})
	if !errors.Is(err, ErrReturned) {
		t.Fatalf("Publish with nothing bound: got %v, want an error wrapping ErrReturned", err)
	}
	if id != "lost" {
		t.Errorf("Publish id: got %q, want %q", id, "lost")
	}

	// Many at once, some sharing an id: every one is matched to its return.
	const n = 50
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := p.Publish(publishCtx(t), Message{ID: fmt.Sprint("dup-", i%5), Data: json.RawMessage(`1`)})
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; !errors.Is(err, ErrReturned) {
			t.Errorf("concurrent Publish with nothing bound: got %v, want an error wrapping ErrReturned", err)
		}
	}

	// Once a queue is bound, publishing succeeds again on the same channel.
	deliveries := amqptest.BindQueue(t, url, exchange, nil)
	if _, err := p.Publish(publishCtx(t), Message{ID: "found", Data: json.RawMessage(`1`)}); err != nil {
		t.Fatalf("Publish with a queue bound: got %v, want nil", err)
	}
	if d := receive(t, deliveries, 1, 5*time.Second)[0]; d.MessageId != "found" {
		t.Errorf("delivery: got %q, want %q", d.MessageId, "found")
	}
}

func TestPublishNacked(t *testing.T) {
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	// A queue that holds nothing and rejects what overflows makes the broker nack.
	amqptest.BindQueue(t, url, exchange, amqp.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"})
	p := newPublisher(t, url, exchange)

	_, err := p.Publish(publishCtx(t), Message{Data: json.RawMessage(`1`)})
	if !errors.Is(err, ErrNacked) {
		t.Fatalf("Publish to a full reject-publish queue: got %v, want an error wrapping ErrNacked", err)
	}
}

func TestPublishConcurrent(t *testing.T) {
	checkGoroutines(t)
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	deliveries := amqptest.BindQueue(t, url, exchange, nil)
	p := newPublisher(t, url, exchange)

	const goroutines, each = 8, 200
	var (
		mu        sync.Mutex
		published = map[string]bool{}
		wg        sync.WaitGroup
	)
	start := time.Now()
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				id, err := p.Publish(publishCtx(t), Message{Channel: "load", Data: json.RawMessage(fmt.Sprintf(`{"g":%d,"i":%d}`, g, i))})
				if err != nil {
					t.Errorf("Publish %d/%d: got %v, want nil", g, i, err)
					return
				}
				mu.Lock()
				published[id] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("%d publishes confirmed in %v", goroutines*each, time.Since(start))
	if len(published) != goroutines*each {
		t.Fatalf("confirmed ids: got %d distinct, want %d", len(published), goroutines*each)
	}

	seen := map[string]int{}
	for _, d := range receive(t, deliveries, goroutines*each, 10*time.Second) {
		seen[d.MessageId]++
	}
	for id := range published {
		if seen[id] != 1 {
			t.Errorf("message %s: received %d times, want 1", id, seen[id])
		}
	}
	expectNothing(t, deliveries, 100*time.Millisecond)
}

func TestPublishContextDone(t *testing.T) {
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	deliveries := amqptest.BindQueue(t, url, exchange, nil)
	p := newPublisher(t, url, exchange)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := p.Publish(ctx, Message{Data: json.RawMessage(`1`)})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with a cancelled context: got %v, want an error wrapping context.Canceled", err)
	}
	expectNothing(t, deliveries, 100*time.Millisecond)
}

func TestPublishAfterClose(t *testing.T) {
	checkGoroutines(t)
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	var (
		mu     sync.Mutex
		states []bool
	)
	p, err := New(publishCtx(t), Config{URL: url, Exchange: exchange, Logger: testLogger(t), OnStateChange: func(c bool) {
		mu.Lock()
		states = append(states, c)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatalf("New: got %v, want nil", err)
	}
	if !p.Connected() {
		t.Errorf("Connected after New: got false, want true")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: got %v, want nil", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: got %v, want nil", err)
	}
	if p.Connected() {
		t.Errorf("Connected after Close: got true, want false")
	}
	_, err = p.Publish(publishCtx(t), Message{Data: json.RawMessage(`1`)})
	if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("Publish after Close: got %v, want an error wrapping ErrClosed and ErrUnavailable", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(states) != "[true false]" {
		t.Errorf("OnStateChange calls: got %v, want [true false]", states)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no URL", Config{}, "URL is required"},
		{"not an AMQP URL", Config{URL: "http://example.com/"}, "config: URL"},
		{"backoff bounds reversed", Config{URL: amqptest.DefaultURL, ReconnectMin: time.Second, ReconnectMax: time.Millisecond}, "ReconnectMin"},
		{"nothing listening", Config{URL: "amqp://guest:guest@127.0.0.1:1/"}, "dial tcp 127.0.0.1:1"},
		{"nothing listening on either node", Config{URL: "amqp://guest:guest@127.0.0.1:1/,amqp://guest:guest@127.0.0.1:2/"}, "no node of 2 answers"},
		{"a bad second URL", Config{URL: "amqp://guest:guest@127.0.0.1:1/,amqp://guest:se%zzcret@127.0.0.1:5672/"}, "URL 2 of 2"},
		// url.Parse quotes the whole URL in its error: the password must not reach it.
		{"a password with a bad escape", Config{URL: "amqp://guest:se%zzcret@127.0.0.1:5672/"}, "config: URL"},
		{"a password with a space", Config{URL: "amqp://guest:se cret@127.0.0.1:5672/"}, "config: URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			start := time.Now()
			p, err := New(ctx, tc.cfg)
			if err == nil {
				p.Close()
				t.Fatalf("New: got nil error, want one containing %q", tc.want)
			}
			if !strings.HasPrefix(err.Error(), "producer: new: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: got %q, want %q... containing %q", err, "producer: new: ", tc.want)
			}
			if strings.Contains(err.Error(), "cret") {
				t.Errorf("New: got %q, which holds the URL's password", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("New took %v, want it to fail fast", d)
			}
		})
	}
}

func TestNewExchangeOfAnotherType(t *testing.T) {
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	ch := amqptest.Channel(t, url)
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		t.Fatalf("declare: %v", err)
	}
	p, err := New(publishCtx(t), Config{URL: url, Exchange: exchange, Logger: testLogger(t)})
	if err == nil {
		p.Close()
		t.Fatal("New with a direct exchange of that name: got nil error, want PRECONDITION_FAILED")
	}
	if !strings.Contains(err.Error(), "declare exchange") {
		t.Errorf("New: got %q, want it to name the exchange declaration", err)
	}
}

// TestReconnectAfterBrokerClose has the broker close the Publisher's connection, as an
// operator or a broker restart would, while publishes are in flight.
func TestReconnectAfterBrokerClose(t *testing.T) {
	checkGoroutines(t)
	url := amqptest.URL(t)
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("rabbitmqctl is not on PATH and CI=true: %v", err)
		}
		t.Skipf("rabbitmqctl is not on PATH: %v", err)
	}
	exchange, _ := amqptest.Names(t, url)
	deliveries := amqptest.BindQueue(t, url, exchange, nil)
	name := "herald-producer-" + message.NewID()[:12]
	states := make(chan bool, 16)
	// The lifecycle goroutine reports the loss before it reconnects: held there until the
	// test has seen a publish fail while disconnected.
	release := make(chan struct{})
	var reconnects atomic.Int32
	p := newPublisher(t, url, exchange, func(c *Config) {
		c.Name = name
		c.ReconnectMin, c.ReconnectMax = 50*time.Millisecond, 500*time.Millisecond
		c.OnStateChange = func(connected bool) {
			states <- connected
			if !connected {
				<-release
			}
		}
		c.OnReconnect = func() { reconnects.Add(1) }
	})
	t.Cleanup(func() { // before Close, which reports a loss too
		select {
		case <-release:
		default:
			close(release)
		}
	})
	waitState(t, states, true)

	// Publishers that keep going through the outage: each publish must succeed or
	// fail with ErrUnavailable, and every confirmed one must arrive.
	stop := make(chan struct{})
	var (
		wg          sync.WaitGroup
		mu          sync.Mutex
		confirmed   = map[string]bool{}
		unavailable int
	)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				id, err := p.Publish(publishCtx(t), Message{Data: json.RawMessage(`"load"`)})
				mu.Lock()
				switch {
				case err == nil:
					confirmed[id] = true
				case errors.Is(err, ErrUnavailable):
					unavailable++
				default:
					t.Errorf("Publish during the outage: got %v, want nil or ErrUnavailable", err)
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}

	time.Sleep(50 * time.Millisecond)
	pid := connectionPID(t, name)
	rabbitmqctl(t, "close_connection", pid, "herald test: forced close")
	waitState(t, states, false)

	// Until the reconnect, a publish fails at once.
	start := time.Now()
	_, err := p.Publish(publishCtx(t), Message{Data: json.RawMessage(`1`)})
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("Publish while disconnected: got %v, want an error wrapping ErrUnavailable", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Publish while disconnected took %v, want it to fail at once", d)
	}
	close(release)

	waitState(t, states, true)
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()

	id, err := p.Publish(publishCtx(t), Message{Data: json.RawMessage(`"after"`)})
	if err != nil {
		t.Fatalf("Publish after reconnect: got %v, want nil", err)
	}
	mu.Lock()
	confirmed[id] = true
	t.Logf("during the test: %d publishes confirmed, %d unavailable", len(confirmed), unavailable)
	mu.Unlock()

	// At least once: every confirmed message arrives (unconfirmed ones may too).
	received := map[string]bool{}
	deadline := time.After(5 * time.Second)
	for missing := len(confirmed); missing > 0; {
		select {
		case d := <-deliveries:
			if confirmed[d.MessageId] && !received[d.MessageId] {
				missing--
			}
			received[d.MessageId] = true
		case <-deadline:
			t.Fatalf("%d confirmed messages did not arrive", missing)
		}
	}
	if got := reconnects.Load(); got != 1 {
		t.Errorf("reconnects: got %d, want 1", got)
	}
}

func waitState(t *testing.T, states <-chan bool, want bool) {
	t.Helper()
	select {
	case got := <-states:
		if got != want {
			t.Fatalf("OnStateChange: got %v, want %v", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("OnStateChange(%v) not called within 5s", want)
	}
}

// connectionPID finds the broker's pid of the connection with the given name.
func connectionPID(t *testing.T, name string) string {
	t.Helper()
	for range 20 {
		out := rabbitmqctl(t, "list_connections", "pid", "client_properties", "--quiet", "--no-table-headers")
		for line := range strings.Lines(out) {
			pid, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
			if ok && strings.Contains(props, `{"connection_name","`+name+`"}`) {
				return pid
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no connection named %s in rabbitmqctl list_connections", name)
	return ""
}

func rabbitmqctl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
