package consumer

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/amqptest"
	"github.com/heraldgw/herald/producer/message"
)

// lineCounter is a slog handler that counts the records whose message starts with one of
// prefixes, and passes every record on to next. mu protects counts.
type lineCounter struct {
	next     slog.Handler
	prefixes []string
	mu       *sync.Mutex
	counts   map[string]int
}

func newLineCounter(next slog.Handler, prefixes ...string) *lineCounter {
	return &lineCounter{next: next, prefixes: prefixes, mu: &sync.Mutex{}, counts: map[string]int{}}
}

func (h *lineCounter) Enabled(ctx context.Context, l slog.Level) bool { return true }

func (h *lineCounter) Handle(ctx context.Context, r slog.Record) error {
	for _, p := range h.prefixes {
		if strings.HasPrefix(r.Message, p) {
			h.mu.Lock()
			h.counts[p]++
			h.mu.Unlock()
		}
	}
	return h.next.Handle(ctx, r)
}

func (h *lineCounter) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(as)
	return &c
}

func (h *lineCounter) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}

func (h *lineCounter) count(prefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[prefix]
}

// TestStreamForeignMessagesReadAlike: messages from an AMQP client that sets no message id
// and no time, or headers Herald cannot read, look the same on two gateways' consumers
// and on a replay: the id derived from the offset, no time made up, the unreadable
// optional headers left out (and counted, and logged in a few bounded lines).
func TestStreamForeignMessagesReadAlike(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	const logPrefix = "consumer delivers a message without a header"
	var recs []*streamRecorder
	var streams []*Stream
	var counters []*lineCounter
	var mu sync.Mutex // protects badHeaders
	badHeaders := map[string]int{}
	for i := range 2 {
		cfg := streamTestConfig(t, url, exchange, stream)
		cfg.Name = fmt.Sprintf("herald-test-foreign-%d", i)
		counter := newLineCounter(cfg.Logger.Handler(), logPrefix)
		cfg.Logger = slog.New(counter)
		if i == 0 {
			cfg.OnBadHeader = func(h string) {
				mu.Lock()
				badHeaders[h]++
				mu.Unlock()
			}
		}
		rec := newStreamRecorder()
		s := NewStream(cfg, rec)
		testRun(t, s.Run)
		streamWaitReady(t, s)
		recs, streams, counters = append(recs, rec), append(streams, s), append(counters, counter)
	}

	when := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	long := strings.Repeat("z", 4000)
	pubs := []amqp.Publishing{
		// No message id, no time header, no timestamp property: what amqplib or pika send
		// by default.
		{Body: []byte(`{"n":0}`), Headers: amqp.Table{"channel": "room"}},
		// No message id; the AMQP timestamp property only.
		{Body: []byte(`{"n":1}`), Timestamp: when},
		// An id, and optional headers that cannot be read: delivered without them.
		{MessageId: "bad-optional", Body: []byte(`{"n":2}`), Headers: amqp.Table{
			"time": "yesterday", "from": int32(5), "source": int32(9), "channel": "room"}},
	}
	const flood = 40 // more messages with a time that cannot be read: counted, not all logged
	for i := range flood {
		pubs = append(pubs, amqp.Publishing{Body: []byte(fmt.Sprint(i)), Headers: amqp.Table{"time": long}})
	}
	newStreamPublisher(t, url, exchange).publish(pubs...)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, b := recs[0].waitFor(ctx, t, len(pubs)), recs[1].waitFor(ctx, t, len(pubs))
	var replayed []message.Message
	err := streams[1].Replay(ctx, a[0].Offset-1, func(m message.Message) bool {
		replayed = append(replayed, m)
		return len(replayed) < len(pubs)
	})
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	for name, got := range map[string][]message.Message{"gateway 1": b, "replay": replayed} {
		if len(got) != len(a) {
			t.Fatalf("%s: got %d messages, want %d", name, len(got), len(a))
		}
		for i := range a {
			if got[i].ID != a[i].ID || got[i].Offset != a[i].Offset || !got[i].Time.Equal(a[i].Time) ||
				got[i].From != a[i].From || got[i].Channel != a[i].Channel {
				t.Errorf("%s message %d: got %+v, want it as gateway 0 has it: %+v", name, i, got[i], a[i])
			}
		}
	}
	for i, m := range a[:3] {
		wantID := message.OffsetID(m.Offset)
		if i == 2 {
			wantID = "bad-optional"
		}
		if m.ID != wantID {
			t.Errorf("message %d: got id %q, want %q", i, m.ID, wantID)
		}
		if wantTime := map[int]time.Time{1: when}[i]; !m.Time.Equal(wantTime) {
			t.Errorf("message %d: got time %v, want %v", i, m.Time, wantTime)
		}
	}
	if m := a[2]; m.From != "" || m.Source != "" || m.Channel != "room" || string(m.Data) != `{"n":2}` {
		t.Errorf("message with bad optional headers: got %+v, want it without from, source and time, the rest intact", m)
	}

	mu.Lock()
	defer mu.Unlock()
	if want := (map[string]int{"time": flood + 1, "from": 1, "source": 1}); fmt.Sprint(badHeaders) != fmt.Sprint(want) {
		t.Errorf("OnBadHeader: got %v, want %v", badHeaders, want)
	}
	// flood+3 bad headers within a few milliseconds: one line, the first, until the
	// sampler lets the next through (logSampleEvery).
	for i, c := range counters {
		if n := c.count(logPrefix); n != 1 {
			t.Errorf("gateway %d: got %d lines %q, want 1 (sampled)", i, n, logPrefix)
		}
	}
}

// TestLogSamplerBoundsLines checks that a logSampler lets the first line through, holds
// back the rest within logSampleEvery, and reports how many it held.
func TestLogSamplerBoundsLines(t *testing.T) {
	var l logSampler
	if ok, held := l.allow(); !ok || held != 0 {
		t.Fatalf("first line: got %v, %d held; want it let through", ok, held)
	}
	for range 5 {
		if ok, _ := l.allow(); ok {
			t.Fatal("a line within logSampleEvery of the last: let through, want it held back")
		}
	}
	l.next = time.Now() // as if logSampleEvery had passed
	if ok, held := l.allow(); !ok || held != 5 {
		t.Errorf("after the interval: got %v, %d held; want let through with 5 held", ok, held)
	}
}
