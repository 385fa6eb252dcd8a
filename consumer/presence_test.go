package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/amqptest"
)

// presenceRecorder is a PresenceHandler that records every body and PresenceConnected
// call. mu protects bodies and connects; changed gets a signal (without blocking) after
// each call.
type presenceRecorder struct {
	mu       sync.Mutex
	bodies   []string
	connects int
	changed  chan struct{}

	// When gate is not nil, the first HandlePresence closes entered and then waits until
	// gate is closed (release).
	gate    chan struct{}
	entered chan struct{}
	release func()
}

func newPresenceRecorder() *presenceRecorder {
	return &presenceRecorder{changed: make(chan struct{}, 1)}
}

// newGatedPresenceRecorder returns a recorder whose first HandlePresence blocks until
// release is called. Register release as a cleanup after testRun, so that Run can
// return when the test fails while the handler waits.
func newGatedPresenceRecorder() *presenceRecorder {
	r := newPresenceRecorder()
	r.gate, r.entered = make(chan struct{}), make(chan struct{})
	var once sync.Once
	r.release = func() { once.Do(func() { close(r.gate) }) }
	return r
}

func (r *presenceRecorder) HandlePresence(body []byte) {
	r.mu.Lock()
	first := len(r.bodies) == 0
	r.bodies = append(r.bodies, string(body))
	r.mu.Unlock()
	r.signal()
	if first && r.gate != nil {
		close(r.entered)
		<-r.gate
	}
}

func (r *presenceRecorder) PresenceConnected() {
	r.mu.Lock()
	r.connects++
	r.mu.Unlock()
	r.signal()
}

func (r *presenceRecorder) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *presenceRecorder) snapshot() (bodies []string, connects int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.bodies), r.connects
}

// waitFor waits until cond holds for what is recorded, failing the test after timeout.
func (r *presenceRecorder) waitFor(t *testing.T, timeout time.Duration, what string, cond func(bodies []string, connects int) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if cond(r.snapshot()) {
			return
		}
		select {
		case <-r.changed:
		case <-deadline.C:
			bodies, connects := r.snapshot()
			t.Fatalf("%s: not within %v (got %d bodies, last %q; %d PresenceConnected calls)",
				what, timeout, len(bodies), bodies[max(0, len(bodies)-3):], connects)
		}
	}
}

// waitConnects waits for n PresenceConnected calls.
func (r *presenceRecorder) waitConnects(t *testing.T, n int) {
	t.Helper()
	r.waitFor(t, 10*time.Second, fmt.Sprintf("%d PresenceConnected calls", n), func(_ []string, c int) bool { return c >= n })
}

// waitBodies waits until every one of want has been handled.
func (r *presenceRecorder) waitBodies(t *testing.T, want ...string) {
	t.Helper()
	r.waitFor(t, 10*time.Second, fmt.Sprintf("bodies %q handled", want), func(bodies []string, _ int) bool {
		for _, w := range want {
			if !slices.Contains(bodies, w) {
				return false
			}
		}
		return true
	})
}

// presenceNoLeaks checks, when the test ends, that no goroutine started during the test
// is left. Call it first, so that its check runs after every other cleanup.
func presenceNoLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func presenceTestConfig(t *testing.T, url, exchange string) PresenceConfig {
	return PresenceConfig{
		URL:          url,
		Exchange:     exchange,
		Name:         testUniqueName("herald-test-presence-"),
		Logger:       testLogger(t),
		ReconnectMin: 20 * time.Millisecond,
		ReconnectMax: 200 * time.Millisecond,
		SendTimeout:  5 * time.Second,
	}
}

// presenceSend sends body and fails the test on error.
func presenceSend(t *testing.T, l *PresenceLink, body string) {
	t.Helper()
	if err := l.Send(context.Background(), []byte(body)); err != nil {
		t.Fatalf("Send(%q): %v", body, err)
	}
}

// TestPresenceFanOut: every update reaches every gateway's handler, the sender's own
// included, exactly once and in each sender's order, with one link sending from several
// goroutines at once.
func TestPresenceFanOut(t *testing.T) {
	presenceNoLeaks(t)
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	recs := []*presenceRecorder{newPresenceRecorder(), newPresenceRecorder()}
	links := make([]*PresenceLink, len(recs))
	for i, rec := range recs {
		links[i] = NewPresenceLink(presenceTestConfig(t, url, exchange), rec)
		if links[i].Connected() {
			t.Errorf("link %d: Connected before Run: got true, want false", i)
		}
		testRun(t, links[i].Run)
	}
	for i, rec := range recs {
		rec.waitConnects(t, 1)
		if !links[i].Connected() {
			t.Errorf("link %d: Connected after PresenceConnected: got false, want true", i)
		}
	}

	// Each sender is one goroutine: "a" and "a2" send on link A at once, "b" on link B.
	senders := []struct {
		name string
		link *PresenceLink
		n    int
	}{{"a", links[0], 100}, {"a2", links[0], 20}, {"b", links[1], 10}}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for _, s := range senders {
		wg.Go(func() {
			for i := range s.n {
				if err := s.link.Send(context.Background(), fmt.Appendf(nil, "%s:%d", s.name, i)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Send: %v", err)
	}
	// Each link's updates arrive after the ones it sent before: once both end markers
	// are in, any duplicate of an earlier update would be in too.
	presenceSend(t, links[0], "end:a")
	presenceSend(t, links[1], "end:b")

	for i, rec := range recs {
		rec.waitBodies(t, "end:a", "end:b")
		bodies, connects := rec.snapshot()
		next := map[string]int{} // the seq expected next from each sender
		for _, b := range bodies {
			name, seq, _ := strings.Cut(b, ":")
			if name == "end" {
				continue
			}
			if got, want := seq, strconv.Itoa(next[name]); got != want {
				t.Fatalf("link %d: from %s: got seq %s, want %s: lost, duplicated or out of order", i, name, got, want)
			}
			next[name]++
		}
		for _, s := range senders {
			if next[s.name] != s.n {
				t.Errorf("link %d: from %s: got %d updates, want %d", i, s.name, next[s.name], s.n)
			}
		}
		if got, want := len(bodies), 100+20+10+2; got != want {
			t.Errorf("link %d: got %d bodies, want %d", i, got, want)
		}
		if connects != 1 {
			t.Errorf("link %d: got %d PresenceConnected calls, want 1", i, connects)
		}
	}
}

// TestPresenceReconnect: dropping either connection is reported (false, then true) and
// followed by PresenceConnected, with a new queue after a consumer drop; Sends work again
// after each.
func TestPresenceReconnect(t *testing.T) {
	presenceNoLeaks(t)
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	cfg := presenceTestConfig(t, url, exchange)
	states := newTestStates()
	cfg.OnStateChange = states.record
	rec := newPresenceRecorder()
	l := NewPresenceLink(cfg, rec)
	stop, _ := testRun(t, l.Run)
	rec.waitConnects(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got := states.waitFor(ctx, t, 1); got[0] != true {
		t.Fatalf("state changes: got %v, want [true]", got)
	}
	presenceSend(t, l, "before")
	rec.waitBodies(t, "before")

	// The consumer's connection is lost, as when the broker drops it.
	first := l.active.Load()
	_ = first.Conn.Close()
	rec.waitConnects(t, 2)
	if got, want := fmt.Sprint(states.waitFor(ctx, t, 3)), "[true false true]"; got != want {
		t.Fatalf("state changes after the consumer drop: got %s, want %s", got, want)
	}
	if s := l.active.Load(); s == nil || s.queue == first.queue {
		t.Errorf("queue after the reconnect: got %v, want a new one (not %s)", s, first.queue)
	}
	presenceSend(t, l, "after consumer drop")
	rec.waitBodies(t, "after consumer drop")

	// The publisher's connection is lost: the link is down until it is back.
	_ = l.pub.Load().Conn.Close()
	rec.waitConnects(t, 3)
	if got, want := fmt.Sprint(states.waitFor(ctx, t, 5)), "[true false true false true]"; got != want {
		t.Fatalf("state changes after the publisher drop: got %s, want %s", got, want)
	}
	presenceSend(t, l, "after publisher drop")
	rec.waitBodies(t, "after publisher drop")

	if err := stop(); err != nil {
		t.Errorf("Run: got %v, want nil after cancel", err)
	}
	if got, want := fmt.Sprint(states.get()), "[true false true false true false]"; got != want {
		t.Errorf("state changes after Run returned: got %s, want %s", got, want)
	}
	bodies, _ := rec.snapshot()
	if got, want := strings.Join(bodies, ","), "before,after consumer drop,after publisher drop"; got != want {
		t.Errorf("bodies: got %s, want %s", got, want)
	}
}

// presenceCheckUnavailable checks that err is a prompt unavailable error.
func presenceCheckUnavailable(t *testing.T, err error, took time.Duration, also error) {
	t.Helper()
	if !errors.Is(err, ErrPresenceUnavailable) || !errors.Is(err, also) {
		t.Errorf("Send: got %v, want an error wrapping ErrPresenceUnavailable and %v", err, also)
	}
	if took > time.Second {
		t.Errorf("Send took %v, want it to fail at once", took)
	}
}

// TestPresenceSendUnavailable: Send fails at once, with ErrPresenceUnavailable, whenever
// the link is not connected, and with the context's error when it has ended.
func TestPresenceSendUnavailable(t *testing.T) {
	presenceNoLeaks(t)
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	send := func(l *PresenceLink, ctx context.Context) (error, time.Duration) {
		start := time.Now()
		err := l.Send(ctx, []byte(`{}`))
		return err, time.Since(start)
	}

	t.Run("before Run", func(t *testing.T) {
		l := NewPresenceLink(presenceTestConfig(t, url, exchange), newPresenceRecorder())
		err, took := send(l, context.Background())
		presenceCheckUnavailable(t, err, took, producer.ErrUnavailable)
	})

	t.Run("broker unreachable", func(t *testing.T) {
		cfg := presenceTestConfig(t, "amqp://guest:guest@127.0.0.1:1/", exchange)
		l := NewPresenceLink(cfg, newPresenceRecorder())
		stop, done := testRun(t, l.Run)
		err, took := send(l, context.Background())
		presenceCheckUnavailable(t, err, took, producer.ErrUnavailable)
		select {
		case <-done:
			t.Fatalf("Run returned while the broker is unreachable, want it to keep retrying")
		default:
		}
		if err := stop(); err != nil {
			t.Errorf("Run: got %v, want nil after cancel", err)
		}
	})

	t.Run("ctx ended, after Run", func(t *testing.T) {
		rec := newPresenceRecorder()
		l := NewPresenceLink(presenceTestConfig(t, url, exchange), rec)
		stop, _ := testRun(t, l.Run)
		rec.waitConnects(t, 1)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err, took := send(l, ctx)
		presenceCheckUnavailable(t, err, took, context.Canceled)
		if err := stop(); err != nil {
			t.Errorf("Run: got %v, want nil after cancel", err)
		}
		if l.Connected() {
			t.Errorf("Connected after Run returned: got true, want false")
		}
		err, took = send(l, context.Background())
		presenceCheckUnavailable(t, err, took, producer.ErrUnavailable)
	})
}

// TestPresenceRunCleansUp: while Run runs its queue exists, exclusive to the link; once
// Run returns the queue is gone and no goroutine is left; Run cannot be called again.
func TestPresenceRunCleansUp(t *testing.T) {
	presenceNoLeaks(t)
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	rec := newPresenceRecorder()
	l := NewPresenceLink(presenceTestConfig(t, url, exchange), rec)
	stop, _ := testRun(t, l.Run)
	rec.waitConnects(t, 1)
	queue := l.active.Load().queue

	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	// passive declares the queue passively on a channel of its own (a failure closes it)
	// and returns the broker's reply code, 0 when the queue is there and free to use.
	passive := func() int {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatalf("channel: %v", err)
		}
		defer ch.Close()
		_, err = ch.QueueDeclarePassive(queue, false, true, true, false, nil)
		var aerr *amqp.Error
		if errors.As(err, &aerr) {
			return aerr.Code
		}
		if err != nil {
			t.Fatalf("passive declare of %s: %v", queue, err)
		}
		return 0
	}
	if got := passive(); got != amqp.ResourceLocked {
		t.Errorf("passive declare of %s while Run runs: got code %d, want %d (RESOURCE_LOCKED: exclusive to the link)",
			queue, got, amqp.ResourceLocked)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: got %v, want nil after cancel", err)
	}
	// The broker deletes an exclusive queue as it closes its connection; allow it a moment.
	deadline := time.Now().Add(5 * time.Second)
	for got := passive(); got != amqp.NotFound; got = passive() {
		if time.Now().After(deadline) {
			t.Fatalf("passive declare of %s after Run returned: got code %d, want %d (NOT_FOUND)", queue, got, amqp.NotFound)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The exchange stays, a durable fanout (declaring it so again is accepted).
	if err := amqptest.Channel(t, url).ExchangeDeclare(exchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		t.Errorf("declare of exchange %s as a durable fanout after Run: %v", exchange, err)
	}
	if err := l.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("second Run: got %v, want an error saying it was called twice", err)
	}
}

// presenceQueued returns how many updates wait in the link's queue now (its ready
// messages), asking on a channel of the link's consumer connection: the queue is
// exclusive to it.
func presenceQueued(t *testing.T, l *PresenceLink) int {
	t.Helper()
	s := l.active.Load()
	if s == nil {
		t.Fatalf("the link has no consumer session")
	}
	ch, err := s.Conn.Channel()
	if err != nil {
		t.Fatalf("channel on the link's connection: %v", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(s.queue, false, true, true, false, nil)
	if err != nil {
		t.Fatalf("passive declare of %s: %v", s.queue, err)
	}
	return q.Messages
}

// presenceRunHeld runs a link with cfg and the given prefetch until the test ends, sends
// it the update "0" and waits until its handler holds it; the handler's rec.release lets
// it go on.
func presenceRunHeld(t *testing.T, cfg PresenceConfig, prefetch int) (*PresenceLink, *presenceRecorder) {
	t.Helper()
	rec := newGatedPresenceRecorder()
	l := NewPresenceLink(cfg, rec)
	l.prefetch = prefetch
	testRun(t, l.Run)
	t.Cleanup(rec.release) // runs before testRun's stop
	rec.waitConnects(t, 1)
	presenceSend(t, l, "0")
	select {
	case <-rec.entered:
	case <-time.After(10 * time.Second):
		t.Fatalf("the first update was not handled within 10s")
	}
	return l, rec
}

// TestPresenceQueueDropsOldest: updates that wait in the queue past MaxQueued are
// dropped oldest first. With the handler held on the first update, the link holds
// prefetch of them (the first and the nine after it); of the 40 that wait in the
// queue only the newest 5 remain.
func TestPresenceQueueDropsOldest(t *testing.T) {
	presenceNoLeaks(t)
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	cfg := presenceTestConfig(t, url, exchange)
	cfg.MaxQueued = 5
	l, rec := presenceRunHeld(t, cfg, 10)
	const n = 50
	for i := 1; i < n; i++ {
		presenceSend(t, l, strconv.Itoa(i))
	}
	if got := presenceQueued(t, l); got != cfg.MaxQueued {
		t.Errorf("updates queued with the handler held: got %d, want MaxQueued %d", got, cfg.MaxQueued)
	}
	rec.release()
	// Sent any earlier, "end" could push the oldest queued update out.
	rec.waitBodies(t, strconv.Itoa(n-1))
	presenceSend(t, l, "end")
	rec.waitBodies(t, "end")

	var want []string
	for i := range n {
		if i < l.prefetch || i >= n-cfg.MaxQueued {
			want = append(want, strconv.Itoa(i))
		}
	}
	want = append(want, "end")
	bodies, _ := rec.snapshot()
	if got, want := strings.Join(bodies, ","), strings.Join(want, ","); got != want {
		t.Errorf("bodies: got %s, want %s", got, want)
	}
}

// TestPresenceQueueExpires: updates that wait in the queue longer than TTL are dropped.
func TestPresenceQueueExpires(t *testing.T) {
	presenceNoLeaks(t)
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	cfg := presenceTestConfig(t, url, exchange)
	cfg.TTL = 100 * time.Millisecond
	l, rec := presenceRunHeld(t, cfg, 1) // the held update only: the others wait in the queue
	for _, b := range []string{"1", "2", "3"} {
		presenceSend(t, l, b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for got := presenceQueued(t, l); got != 0; got = presenceQueued(t, l) {
		if time.Now().After(deadline) {
			t.Fatalf("updates queued 5s after they were sent: got %d, want 0 after TTL %v", got, cfg.TTL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	rec.release()
	presenceSend(t, l, "end")
	rec.waitBodies(t, "end")
	bodies, _ := rec.snapshot()
	if got, want := strings.Join(bodies, ","), "0,end"; got != want {
		t.Errorf("bodies: got %s, want %s (the updates queued past TTL dropped)", got, want)
	}
}

// TestPresenceRunFailsForGood: Run returns an error at once for a config it cannot work
// with, or one the broker refuses for good, instead of retrying.
func TestPresenceRunFailsForGood(t *testing.T) {
	presenceNoLeaks(t)
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	ch := amqptest.Channel(t, url)
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		t.Fatalf("declare exchange: %v", err)
	}

	tests := []struct {
		name    string
		cfg     PresenceConfig
		nilH    bool
		want    string
		refused bool // the error wraps the broker's PRECONDITION_FAILED
	}{
		{name: "no URL", cfg: PresenceConfig{}, want: "URL is required"},
		{name: "bad URL", cfg: PresenceConfig{URL: "http://127.0.0.1/"}, want: "presence config: URL"},
		{name: "password with a bad escape", cfg: PresenceConfig{URL: "amqp://guest:se%zzcret@127.0.0.1/"}, want: "presence config: URL"},
		{name: "negative TTL", cfg: PresenceConfig{URL: url, TTL: -time.Second}, want: "TTL -1s"},
		{name: "negative MaxQueued", cfg: PresenceConfig{URL: url, MaxQueued: -1}, want: "MaxQueued -1"},
		{name: "nil handler", cfg: PresenceConfig{URL: url}, nilH: true, want: "handler is nil"},
		{name: "exchange is direct", cfg: PresenceConfig{URL: url, Exchange: exchange}, want: "declare exchange", refused: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Logger = testLogger(t)
			rec := newPresenceRecorder()
			var h PresenceHandler = rec
			if tt.nilH {
				h = nil
			}
			l := NewPresenceLink(tt.cfg, h)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			err := l.Run(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run: got %v, want an error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "zzcret") {
				t.Errorf("Run: got %q, which holds the URL's password", err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("Run took %v to fail, want it prompt", took)
			}
			var aerr *amqp.Error
			if gotRefused := errors.As(err, &aerr) && aerr.Code == amqp.PreconditionFailed; gotRefused != tt.refused {
				t.Errorf("Run: got %v, want wrapping PRECONDITION_FAILED: %v", err, tt.refused)
			}
			if _, connects := rec.snapshot(); connects != 0 || l.Connected() {
				t.Errorf("after a failed Run: got %d PresenceConnected calls and Connected %v, want 0 and false", connects, l.Connected())
			}
		})
	}
}

func TestPresenceConfigDefaults(t *testing.T) {
	c := PresenceConfig{URL: "amqp://x/"}.withDefaults()
	if c.Exchange != "herald.presence" || c.Name != "herald-presence" || c.TTL != 15*time.Second ||
		c.MaxQueued != 10000 || c.SendTimeout != 5*time.Second || c.Logger == nil {
		t.Errorf("defaults: got %+v", c)
	}
	if err := c.validate(); err != nil {
		t.Errorf("validate defaults: %v", err)
	}
	want := amqp.Table{"x-queue-type": "classic", "x-message-ttl": int64(15000), "x-max-length": int64(10000), "x-overflow": "drop-head"}
	if got := c.queueArgs(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("queue args: got %v, want %v", got, want)
	}
	for _, tt := range []struct {
		ttl  time.Duration
		want int64
	}{{time.Second, 1000}, {1500 * time.Microsecond, 2}, {time.Nanosecond, 1}} {
		c.TTL = tt.ttl
		if got := c.queueArgs()["x-message-ttl"]; got != tt.want {
			t.Errorf("x-message-ttl for TTL %v: got %v, want %d", tt.ttl, got, tt.want)
		}
	}
}
