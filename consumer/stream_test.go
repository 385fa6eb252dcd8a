package consumer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
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

// streamRecorder is a Dispatcher that records every message. mu protects msgs; changed
// gets a signal (without blocking) after each Dispatch.
type streamRecorder struct {
	mu      sync.Mutex
	msgs    []message.Message
	changed chan struct{}
}

func newStreamRecorder() *streamRecorder {
	return &streamRecorder{changed: make(chan struct{}, 1)}
}

func (r *streamRecorder) Dispatch(m message.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *streamRecorder) snapshot() []message.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]message.Message(nil), r.msgs...)
}

// waitFor waits until at least n messages are recorded and returns them; it fails the
// test when ctx ends first.
func (r *streamRecorder) waitFor(ctx context.Context, t *testing.T, n int) []message.Message {
	t.Helper()
	for {
		if got := r.snapshot(); len(got) >= n {
			return got
		}
		select {
		case <-r.changed:
		case <-ctx.Done():
			t.Fatalf("dispatched %d messages before the deadline, want %d", len(r.snapshot()), n)
		}
	}
}

// streamWaitReady waits for s to attach, failing the test after 10s.
func streamWaitReady(t *testing.T, s *Stream) {
	t.Helper()
	select {
	case <-s.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("Stream not ready after 10s")
	}
}

// streamPublisher publishes to the test exchange on its own connection, with confirms.
type streamPublisher struct {
	t        *testing.T
	conn     *amqp.Connection
	ch       *amqp.Channel
	exchange string
}

func newStreamPublisher(t *testing.T, url, exchange string) *streamPublisher {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("publisher: dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("publisher: channel: %v", err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("publisher: confirm: %v", err)
	}
	// The exchange may not exist yet when a test publishes before any Stream runs.
	if err := ch.ExchangeDeclare(exchange, "fanout", true, false, false, false, nil); err != nil {
		t.Fatalf("publisher: declare exchange: %v", err)
	}
	return &streamPublisher{t: t, conn: conn, ch: ch, exchange: exchange}
}

// publish publishes every publishing and waits for the broker to confirm all of them.
// It may be called from any one goroutine at a time; it reports failures with Errorf.
func (p *streamPublisher) publish(ps ...amqp.Publishing) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	confs := make([]*amqp.DeferredConfirmation, 0, len(ps))
	for _, pub := range ps {
		c, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, p.exchange, "", false, false, pub)
		if err != nil {
			p.t.Errorf("publish: %v", err)
			return
		}
		confs = append(confs, c)
	}
	for _, c := range confs {
		if ok, err := c.WaitContext(ctx); !ok || err != nil {
			p.t.Errorf("publish: confirm of tag %d: got ack=%v err=%v, want an ack", c.DeliveryTag, ok, err)
			return
		}
	}
}

// streamMessages returns n prepared messages whose data is {"seq": from+i}; every third
// has a channel, every fifth names users, every seventh has a sender.
func streamMessages(from, n int) []message.Message {
	ms := make([]message.Message, n)
	for i := range ms {
		seq := from + i
		m := message.Message{Data: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, seq))}
		if seq%3 == 0 {
			m.Channel = "room:" + strconv.Itoa(seq%10)
		}
		if seq%5 == 0 {
			m.Users = []string{"u" + strconv.Itoa(seq), "u2"}
		}
		if seq%7 == 0 {
			m.From = "alice"
		}
		m.Prepare(time.Now())
		ms[i] = m
	}
	return ms
}

func streamEncode(ms []message.Message) []amqp.Publishing {
	ps := make([]amqp.Publishing, len(ms))
	for i, m := range ms {
		ps[i] = producer.Encode(m)
	}
	return ps
}

// streamCheck checks that got is exactly want, in order, with contiguous offsets and the
// fields decoded (all but Users, which the broker drops; see TestStreamUsersHeader).
func streamCheck(t *testing.T, got, want []message.Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d messages dispatched, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.ID != w.ID {
			t.Fatalf("message %d: got id %s (data %s), want %s (data %s): lost, duplicated or out of order",
				i, g.ID, g.Data, w.ID, w.Data)
		}
		// Users is not compared: RabbitMQ streams drop array headers (TestStreamUsersHeader).
		if g.Channel != w.Channel || g.From != w.From || !bytes.Equal(g.Data, w.Data) || !g.Time.Equal(w.Time) {
			t.Errorf("message %d: got %+v, want %+v", i, g, w)
		}
		if i > 0 && g.Offset != got[i-1].Offset+1 {
			t.Errorf("message %d: got offset %d after %d, want %d", i, g.Offset, got[i-1].Offset, got[i-1].Offset+1)
		}
		if g.Offset < 0 {
			t.Errorf("message %d: got offset %d, want a stream offset", i, g.Offset)
		}
	}
}

func streamTestConfig(t *testing.T, url, exchange, stream string) StreamConfig {
	return StreamConfig{
		URL:          url,
		Exchange:     exchange,
		Stream:       stream,
		MaxAge:       time.Hour,
		MaxBytes:     64 << 20,
		SegmentBytes: 8 << 20,
		Logger:       testLogger(t),
		ReconnectMin: 50 * time.Millisecond,
		ReconnectMax: 500 * time.Millisecond,
	}
}

func TestStreamDeliversInOrderExactlyOnce(t *testing.T) {
	url := amqptest.URL(t)
	for _, prefetch := range []int{0, 1, 16} { // 0 is the default, 1000
		t.Run(fmt.Sprintf("prefetch=%d", prefetch), func(t *testing.T) {
			exchange, stream := amqptest.Names(t, url)
			cfg := streamTestConfig(t, url, exchange, stream)
			cfg.Prefetch = prefetch
			rec := newStreamRecorder()
			s := NewStream(cfg, rec)
			if s.Connected() {
				t.Errorf("Connected before Run: got true, want false")
			}
			if off, ok := s.LastOffset(); ok {
				t.Errorf("LastOffset before Run: got %d, true; want false", off)
			}
			stop, _ := testRun(t, s.Run)
			streamWaitReady(t, s)
			if !s.Connected() {
				t.Errorf("Connected after Ready: got false, want true")
			}

			const n = 500
			want := streamMessages(0, n)
			newStreamPublisher(t, url, exchange).publish(streamEncode(want)...)

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			rec.waitFor(ctx, t, n)
			time.Sleep(200 * time.Millisecond) // let any duplicate arrive
			got := rec.snapshot()
			streamCheck(t, got, want)
			if off, ok := s.LastOffset(); !ok || off != got[n-1].Offset {
				t.Errorf("LastOffset: got %d, %v; want %d, true", off, ok, got[n-1].Offset)
			}
			if err := stop(); err != nil {
				t.Errorf("Run: got %v, want nil after cancel", err)
			}
			if s.Connected() {
				t.Errorf("Connected after Run returned: got true, want false")
			}
		})
	}
}

func TestStreamTwoGatewaysSeeTheSameOffsets(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	recs := []*streamRecorder{newStreamRecorder(), newStreamRecorder()}
	for i, rec := range recs {
		cfg := streamTestConfig(t, url, exchange, stream)
		cfg.Name = fmt.Sprintf("herald-test-gateway-%d", i)
		s := NewStream(cfg, rec)
		testRun(t, s.Run)
		streamWaitReady(t, s)
	}
	const n = 200
	want := streamMessages(0, n)
	newStreamPublisher(t, url, exchange).publish(streamEncode(want)...)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, b := recs[0].waitFor(ctx, t, n), recs[1].waitFor(ctx, t, n)
	streamCheck(t, a, want)
	streamCheck(t, b, want)
	for i := range a {
		if a[i].Offset != b[i].Offset {
			t.Fatalf("message %d: got offset %d on gateway 0 and %d on gateway 1, want them equal", i, a[i].Offset, b[i].Offset)
		}
	}
}

// TestStreamForeignPublisherDecodeErrors: deliveries that cannot be delivered as Herald
// messages (a body that is not JSON, a routing header that cannot be read) are dropped and
// reported, and the deliveries around them go through; a plain AMQP message goes through.
func TestStreamForeignPublisherDecodeErrors(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	cfg := streamTestConfig(t, url, exchange, stream)
	var mu sync.Mutex // protects decodeErrs and badHeaders
	var decodeErrs []error
	var badHeaders []string
	cfg.OnDecodeError = func(err error) {
		mu.Lock()
		decodeErrs = append(decodeErrs, err)
		mu.Unlock()
	}
	cfg.OnBadHeader = func(h string) {
		mu.Lock()
		badHeaders = append(badHeaders, h)
		mu.Unlock()
	}
	rec := newStreamRecorder()
	s := NewStream(cfg, rec)
	testRun(t, s.Run)
	streamWaitReady(t, s)

	valid := streamMessages(0, 2)
	pub := newStreamPublisher(t, url, exchange)
	pub.publish(
		amqp.Publishing{MessageId: "not-json", Body: []byte("hello, not JSON")},
		amqp.Publishing{MessageId: "bad-channel-type", Body: []byte(`{"a":1}`), Headers: amqp.Table{"channel": int32(7)}},
		producer.Encode(valid[0]),
		amqp.Publishing{MessageId: "bad-users", Body: []byte(`1`), Headers: amqp.Table{"users": "bob"}},
		// A plain AMQP client: no headers, no timestamp.
		amqp.Publishing{MessageId: "plain", Body: []byte(`"plain"`)},
	)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := rec.waitFor(ctx, t, 2)
	time.Sleep(100 * time.Millisecond)
	got = rec.snapshot()
	if len(got) != 2 {
		t.Fatalf("got %d messages dispatched, want 2", len(got))
	}
	if got[0].ID != valid[0].ID {
		t.Errorf("first dispatched: got id %q, want %q", got[0].ID, valid[0].ID)
	}
	if got[1].ID != "plain" || string(got[1].Data) != `"plain"` || got[1].Channel != "" {
		t.Errorf("second dispatched: got %+v, want the plain message", got[1])
	}
	if !got[1].Time.IsZero() {
		t.Errorf("plain message time: got %v, want none (its publisher gave none)", got[1].Time)
	}
	// Offsets count the dropped deliveries too: valid is the third delivery, plain the fifth.
	if got[1].Offset != got[0].Offset+2 {
		t.Errorf("offsets: got %d then %d, want a difference of 2", got[0].Offset, got[1].Offset)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(decodeErrs) != 3 {
		t.Fatalf("OnDecodeError: got %d calls (%v), want 3", len(decodeErrs), decodeErrs)
	}
	for i, want := range []struct {
		id string
		is error
	}{{"not-json", producer.ErrNotJSON}, {"bad-channel-type", producer.ErrUnroutable}, {"bad-users", producer.ErrUnroutable}} {
		if !strings.Contains(decodeErrs[i].Error(), want.id) || !errors.Is(decodeErrs[i], want.is) {
			t.Errorf("decode error %d: got %q, want it to name message %q and match %v", i, decodeErrs[i], want.id, want.is)
		}
	}
	if g, w := strings.Join(badHeaders, ","), "channel,users"; g != w {
		t.Errorf("OnBadHeader: got %s, want %s", g, w)
	}
}

// streamRabbitmqctl returns the path of rabbitmqctl, failing the test when it is missing
// and CI is "true", and skipping it otherwise.
func streamRabbitmqctl(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("rabbitmqctl not found and CI=true: %v", err)
		}
		t.Skipf("rabbitmqctl not found (set CI=true to fail instead): %v", err)
	}
	return path
}

// streamCloseConnection makes the broker close the connection named name.
func streamCloseConnection(t *testing.T, ctl, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, ctl, "-q", "list_connections", "--no-table-headers", "pid", "client_properties").Output()
	if err != nil {
		t.Fatalf("rabbitmqctl list_connections: %v", err)
	}
	var pids []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		pid, props, ok := strings.Cut(sc.Text(), "\t")
		if ok && strings.Contains(props, `{"connection_name","`+name+`"}`) {
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		t.Fatalf("connections named %q: got %d (%v), want 1\n%s", name, len(pids), pids, out)
	}
	if out, err := exec.CommandContext(ctx, ctl, "-q", "close_connection", pids[0], "test").CombinedOutput(); err != nil {
		t.Fatalf("rabbitmqctl close_connection %s: %v\n%s", pids[0], err, out)
	}
}

func TestStreamReconnectLosesNothing(t *testing.T) {
	ctl := streamRabbitmqctl(t)
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	pub := newStreamPublisher(t, url, exchange)   // used by Run's goroutine (the outage batch) and then this one
	bgPub := newStreamPublisher(t, url, exchange) // used by the background publisher only
	outage := streamMessages(1_000_000, 20)       // published while the consumer is away
	after := streamMessages(2_000_000, 100)       // published after the reconnect

	cfg := streamTestConfig(t, url, exchange, stream)
	cfg.Name = testUniqueName("herald-test-reconnect-")
	cfg.Prefetch = 32
	states := newTestStates()
	cfg.OnStateChange = func(connected bool) {
		states.record(connected)
		if !connected && len(states.get()) == 2 {
			// On Run's goroutine, before it reconnects: surely published while it is away.
			pub.publish(streamEncode(outage)...)
		}
	}
	var reconnects atomic.Int32
	cfg.OnReconnect = func() {
		reconnects.Add(1)
		if st := states.get(); len(st) == 0 || !st[len(st)-1] {
			t.Errorf("OnReconnect: got state changes %v, want OnStateChange(true) first", st)
		}
	}
	rec := newStreamRecorder()
	s := NewStream(cfg, rec)
	stop, _ := testRun(t, s.Run)
	streamWaitReady(t, s)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Publish in the background, before, during and after the close, until the consumer
	// is back. bgSent is written by the background goroutine and read after bgDone.
	stopBG, bgDone := make(chan struct{}), make(chan struct{})
	var bgSent []message.Message
	go func() {
		defer close(bgDone)
		for seq := 0; ; seq += 5 {
			select {
			case <-stopBG:
				return
			default:
			}
			batch := streamMessages(seq, 5)
			bgPub.publish(streamEncode(batch)...)
			bgSent = append(bgSent, batch...)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	rec.waitFor(ctx, t, 50)
	streamCloseConnection(t, ctl, cfg.Name)
	if got := states.waitFor(ctx, t, 3); got[1] != false || got[2] != true {
		t.Fatalf("state changes: got %v, want [true false true]", got)
	}
	if !s.Connected() {
		t.Errorf("Connected after the reconnect: got false, want true")
	}
	time.Sleep(100 * time.Millisecond)
	close(stopBG)
	<-bgDone
	pub.publish(streamEncode(after)...)

	total := len(bgSent) + len(outage) + len(after)
	rec.waitFor(ctx, t, total)
	time.Sleep(300 * time.Millisecond) // let any duplicate arrive
	got := rec.snapshot()
	if len(got) != total {
		t.Fatalf("got %d messages dispatched, want %d", len(got), total)
	}
	// Offsets are contiguous and each message is dispatched once.
	seen := make(map[string]int, total)
	for i, m := range got {
		seen[m.ID]++
		if i > 0 && m.Offset != got[i-1].Offset+1 {
			t.Errorf("message %d: got offset %d after %d, want %d", i, m.Offset, got[i-1].Offset, got[i-1].Offset+1)
		}
	}
	for _, batch := range [][]message.Message{bgSent, outage, after} {
		for _, m := range batch {
			if seen[m.ID] != 1 {
				t.Errorf("message %s: dispatched %d times, want 1", m.Data, seen[m.ID])
			}
		}
	}
	// Each publisher's messages arrive in its publish order.
	var gotBG, gotOutage []message.Message
	inOutage := make(map[string]bool, len(outage))
	for _, m := range outage {
		inOutage[m.ID] = true
	}
	for _, m := range got[:len(got)-len(after)] {
		if inOutage[m.ID] {
			gotOutage = append(gotOutage, m)
		} else {
			gotBG = append(gotBG, m)
		}
	}
	streamCheckOrder(t, "background", gotBG, bgSent)
	streamCheckOrder(t, "outage", gotOutage, outage)
	streamCheck(t, got[len(got)-len(after):], after)
	t.Logf("background published %d messages across the close", len(bgSent))

	if n := reconnects.Load(); n != 1 {
		t.Errorf("OnReconnect: got %d calls, want 1", n)
	}
	if err := stop(); err != nil {
		t.Errorf("Run: got %v, want nil after cancel", err)
	}
	if got, want := fmt.Sprint(states.get()), "[true false true false]"; got != want {
		t.Errorf("state changes: got %s, want %s", got, want)
	}
}

// streamCheckOrder checks that got holds the ids of want in the same order.
func streamCheckOrder(t *testing.T, what string, got, want []message.Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d messages, want %d", what, len(got), len(want))
	}
	for i := range want {
		if got[i].ID != want[i].ID {
			t.Fatalf("%s message %d: got %s, want %s", what, i, got[i].Data, want[i].Data)
		}
	}
}

// TestStreamReconnectBeforeFirstMessage: a Stream that started on an empty stream and
// loses its connection before any delivery resumes from the stream's first message, so
// what was published while it was away is dispatched, once.
func TestStreamReconnectBeforeFirstMessage(t *testing.T) {
	ctl := streamRabbitmqctl(t)
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	pub := newStreamPublisher(t, url, exchange)
	cfg := streamTestConfig(t, url, exchange, stream)

	want := streamMessages(5, 10)
	cfg.Name = testUniqueName("herald-test-reconnect-early-")
	states := newTestStates()
	cfg.OnStateChange = func(connected bool) {
		states.record(connected)
		if !connected && len(states.get()) == 2 {
			pub.publish(streamEncode(want[:5])...) // while the consumer is away
		}
	}
	rec := newStreamRecorder()
	s := NewStream(cfg, rec)
	testRun(t, s.Run)
	streamWaitReady(t, s)
	streamCloseConnection(t, ctl, cfg.Name)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if got := states.waitFor(ctx, t, 3); got[2] != true {
		t.Fatalf("state changes: got %v, want [true false true]", got)
	}
	pub.publish(streamEncode(want[5:])...)
	rec.waitFor(ctx, t, len(want))
	time.Sleep(200 * time.Millisecond)
	streamCheck(t, rec.snapshot(), want)
}

func TestStreamRunReturnsOnCancel(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	s := NewStream(streamTestConfig(t, url, exchange, stream), newStreamRecorder())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	streamWaitReady(t, s)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Run did not return within 10s of cancel")
	}
	if s.Connected() {
		t.Errorf("Connected after Run returned: got true, want false")
	}
	if err := s.Run(context.Background()); err == nil {
		t.Errorf("second Run: got nil, want an error")
	}
}

func TestStreamRunCancelledWhileReconnecting(t *testing.T) {
	ctl := streamRabbitmqctl(t)
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	cfg := streamTestConfig(t, url, exchange, stream)
	cfg.Name = testUniqueName("herald-test-cancel-")
	cfg.ReconnectMin, cfg.ReconnectMax = time.Hour, time.Hour // stays in backoff
	lost := make(chan struct{})
	cfg.OnStateChange = func(connected bool) {
		if !connected {
			close(lost)
		}
	}
	s := NewStream(cfg, newStreamRecorder())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	streamWaitReady(t, s)
	streamCloseConnection(t, ctl, cfg.Name)
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatalf("no OnStateChange(false) within 10s of the broker closing the connection")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Run did not return within 5s of cancel during backoff")
	}
}

func TestStreamRunFailsFast(t *testing.T) {
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	// An exchange of that name that is not a fanout: the broker refuses it for good.
	ch := amqptest.Channel(t, url)
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		t.Fatalf("declare exchange: %v", err)
	}

	tests := []struct {
		name string
		cfg  StreamConfig
		want string
	}{
		{"no URL", StreamConfig{}, "URL is required"},
		{"bad prefetch", StreamConfig{URL: url, Prefetch: 70000}, "Prefetch 70000"},
		{"bad replicas", StreamConfig{URL: url, Replicas: -1}, "Replicas -1"},
		{"bad leader locator", StreamConfig{URL: url, LeaderLocator: "random"}, `LeaderLocator "random"`},
		{"backoff bounds reversed", StreamConfig{URL: url, ReconnectMin: time.Minute}, "ReconnectMin 1m0s is above ReconnectMax 10s"},
		{"refused", StreamConfig{URL: "amqp://guest:guest@127.0.0.1:1/"}, "consumer: connect"},
		{"refused on every node", StreamConfig{URL: "amqp://guest:guest@127.0.0.1:1/, amqp://guest:guest@127.0.0.1:2/"}, "no node of 2 answers"},
		// url.Parse quotes the whole URL in its error: the password must not reach it.
		{"password with a bad escape", StreamConfig{URL: "amqp://guest:se%zzcret@127.0.0.1:1/"}, "stream config: URL"},
		{"exchange of another type", StreamConfig{URL: url, Exchange: exchange}, "consumer: declare exchange"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Logger = testLogger(t)
			s := NewStream(tt.cfg, newStreamRecorder())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := s.Run(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run: got %v, want an error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "zzcret") {
				t.Errorf("Run: got %q, which holds the URL's password", err)
			}
			select {
			case <-s.Ready():
				t.Errorf("Ready closed after a failed start, want it open")
			default:
			}
		})
	}
}

func TestStreamHandleSkipsHandledOffsets(t *testing.T) {
	rec := newStreamRecorder()
	s := NewStream(StreamConfig{URL: "amqp://unused/", Logger: testLogger(t)}, rec)
	delivery := func(off int64) amqp.Delivery {
		return amqp.Delivery{
			MessageId: "m" + strconv.FormatInt(off, 10),
			Body:      []byte(`{}`),
			Headers:   amqp.Table{producer.HeaderStreamOffset: off},
		}
	}
	// As after attaching at offset 12 inside a chunk that starts at 10: 10 and 11 were
	// handled before the loss.
	s.pos = 11
	for _, off := range []int64{10, 11, 12, 12, 13} {
		s.handle(delivery(off))
	}
	got := rec.snapshot()
	var ids []string
	for _, m := range got {
		ids = append(ids, m.ID)
	}
	if g, w := strings.Join(ids, ","), "m12,m13"; g != w {
		t.Errorf("dispatched: got %s, want %s", g, w)
	}
	if off, ok := s.LastOffset(); off != 13 || !ok {
		t.Errorf("LastOffset: got %d, %v; want 13, true", off, ok)
	}
	if got, want := s.resumeArg(), any(int64(14)); got != want {
		t.Errorf("resumeArg: got %v (%T), want %v (%T)", got, got, want, want)
	}
}

func TestStreamConfigDefaultsAndArgs(t *testing.T) {
	c := StreamConfig{URL: "amqp://x/"}.withDefaults()
	if c.Exchange != "herald" || c.Stream != "herald.stream" || c.MaxAge != 24*time.Hour || c.MaxBytes != 1<<30 ||
		c.Prefetch != 1000 || c.Name != "herald-consumer" || c.Replicas != 3 || c.LeaderLocator != "balanced" ||
		c.Logger == nil || c.SegmentBytes != 0 || c.Start != "last" || c.WarmUpWait != time.Second {
		t.Errorf("defaults: got %+v", c)
	}
	args := c.queueArgs()
	want := amqp.Table{"x-queue-type": "stream", "x-max-age": "86400s", "x-max-length-bytes": int64(1 << 30),
		"x-initial-cluster-size": int64(3), "x-queue-leader-locator": "balanced"}
	if fmt.Sprint(args) != fmt.Sprint(want) {
		t.Errorf("queue args: got %v, want %v", args, want)
	}
	c.SegmentBytes = 1 << 20
	if got := c.queueArgs()["x-stream-max-segment-size-bytes"]; got != int64(1<<20) {
		t.Errorf("segment arg: got %v (%T), want int64 1048576", got, got)
	}
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{24 * time.Hour, "86400s"},
		{7 * 24 * time.Hour, "604800s"},
		{1500 * time.Millisecond, "2s"},
		{time.Millisecond, "1s"},
	} {
		if got := streamMaxAgeArg(tt.d); got != tt.want {
			t.Errorf("streamMaxAgeArg(%v): got %q, want %q", tt.d, got, tt.want)
		}
	}
}

// TestStreamUsersHeader checks that a message's users survive the stream. RabbitMQ stores
// a stream message's AMQP 0-9-1 headers as AMQP 1.0 application properties, which cannot
// hold arrays or tables, and drops such values silently (rabbitmq/rabbitmq-server#3565):
// the users header as an AMQP array does not survive. producer.Encode therefore sends
// users as a string holding a JSON array; this test holds it to that.
func TestStreamUsersHeader(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	rec := newStreamRecorder()
	s := NewStream(streamTestConfig(t, url, exchange, stream), rec)
	testRun(t, s.Run)
	streamWaitReady(t, s)
	m := message.Message{Users: []string{"alice", "bob"}, Channel: "room:1", Data: json.RawMessage(`{}`)}
	m.Prepare(time.Now())
	newStreamPublisher(t, url, exchange).publish(producer.Encode(m))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := rec.waitFor(ctx, t, 1)[0]
	// RabbitMQ streams drop array-valued headers: producer.Encode sends users as a string
	// holding a JSON array, which a stream keeps. Losing it would send a message meant
	// for some users to every subscriber of its channel, or to everyone.
	if g, w := strings.Join(got.Users, ","), "alice,bob"; g != w {
		t.Errorf("users: got %q, want %q", g, w)
	}
}
