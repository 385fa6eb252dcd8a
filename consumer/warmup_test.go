package consumer

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldgw/herald/producer/amqptest"
	"github.com/heraldgw/herald/producer/message"
)

// logStarts records OnLogStart calls with how many messages were dispatched to rec by
// then. mu protects calls.
type logStarts struct {
	rec   *streamRecorder
	mu    sync.Mutex
	calls [][2]int64 // newest, dispatched before
}

func (l *logStarts) record(newest int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, [2]int64{newest, int64(len(l.rec.snapshot()))})
}

func (l *logStarts) get() [][2]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][2]int64(nil), l.calls...)
}

// streamFill makes the stream exist and publishes n messages to it before a Stream under
// test starts; it returns them.
func streamFill(t *testing.T, cfg StreamConfig, n int) []message.Message {
	t.Helper()
	setup := NewStream(cfg, newStreamRecorder())
	stopSetup, _ := testRun(t, setup.Run)
	streamWaitReady(t, setup)
	if err := stopSetup(); err != nil {
		t.Fatalf("setup Run: got %v, want nil", err)
	}
	ms := streamMessages(0, n)
	newStreamPublisher(t, cfg.URL, cfg.Exchange).publish(streamEncode(ms)...)
	return ms
}

// TestStreamWarmsUp: a Stream started on a stream that holds messages reads it from
// Start up to its head before it is ready, reports the newest offset to OnLogStart once,
// after those and before Ready, and then dispatches what is published next, with no gap
// and nothing twice. From "last" that is the stream's last chunk; from "first",
// everything.
func TestStreamWarmsUp(t *testing.T) {
	url := amqptest.URL(t)
	for _, start := range []any{nil, "first"} {
		t.Run(fmt.Sprint("start ", start), func(t *testing.T) {
			exchange, stream := amqptest.Names(t, url)
			cfg := streamTestConfig(t, url, exchange, stream)
			const n = 300
			old := streamFill(t, cfg, n)

			rec := newStreamRecorder()
			starts := &logStarts{rec: rec}
			cfg.Start = start
			cfg.OnLogStart = starts.record
			s := NewStream(cfg, rec)
			testRun(t, s.Run)
			streamWaitReady(t, s)

			calls := starts.get()
			if len(calls) != 1 || calls[0][0] != n-1 {
				t.Fatalf("OnLogStart: got %v, want one call with the newest offset %d", calls, n-1)
			}
			warm := rec.snapshot()
			if int64(len(warm)) != calls[0][1] {
				t.Errorf("dispatched before OnLogStart: %d, by Ready: %d; want the same", calls[0][1], len(warm))
			}
			if len(warm) == 0 || (start == "first" && len(warm) != n) {
				t.Fatalf("warm-up dispatched %d messages, want the last chunk (from last) or all %d (from first)", len(warm), n)
			}
			streamCheck(t, warm, old[n-len(warm):]) // the newest ones, in order
			if off, ok := s.LastOffset(); !ok || off != n-1 {
				t.Errorf("LastOffset after the warm-up: got %d, %v; want %d", off, ok, n-1)
			}
			t.Logf("warm-up from %v dispatched offsets %d..%d", cfg.Start, warm[0].Offset, warm[len(warm)-1].Offset)

			live := streamMessages(n, 10)
			newStreamPublisher(t, url, exchange).publish(streamEncode(live)...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rec.waitFor(ctx, t, len(warm)+len(live))
			time.Sleep(200 * time.Millisecond) // let any duplicate arrive
			streamCheck(t, rec.snapshot(), append(old[n-len(warm):], live...))
		})
	}
}

// TestStreamWarmUpOnAnEmptyStream: on an empty stream (the consumer at "last" gets
// nothing, and RabbitMQ 3.10 says nothing of the head) the warm-up ends after
// WarmUpWait with no message: OnLogStart gets message.NoOffset, and the first message
// published next is dispatched.
func TestStreamWarmUpOnAnEmptyStream(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	cfg := streamTestConfig(t, url, exchange, stream)
	cfg.WarmUpWait = 300 * time.Millisecond
	rec := newStreamRecorder()
	starts := &logStarts{rec: rec}
	cfg.OnLogStart = starts.record
	s := NewStream(cfg, rec)
	testRun(t, s.Run)
	streamWaitReady(t, s)
	if calls := starts.get(); len(calls) != 1 || calls[0] != [2]int64{message.NoOffset, 0} {
		t.Fatalf("OnLogStart: got %v, want one call with %d and nothing dispatched", calls, message.NoOffset)
	}
	want := streamMessages(0, 3)
	newStreamPublisher(t, url, exchange).publish(streamEncode(want)...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec.waitFor(ctx, t, len(want))
	streamCheck(t, rec.snapshot(), want)
	if got := rec.snapshot()[0].Offset; got != 0 {
		t.Errorf("first offset: got %d, want 0 (the stream was empty)", got)
	}
}

// TestStreamWarmUpUnderTraffic: a Stream that starts while a publisher never pauses is
// ready all the same, and dispatches one contiguous run of offsets from its first
// delivery on: nothing lost or repeated across the end of the warm-up.
func TestStreamWarmUpUnderTraffic(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	cfg := streamTestConfig(t, url, exchange, stream)
	streamFill(t, cfg, 100)

	pub := newStreamPublisher(t, url, exchange)
	var published atomic.Int64
	stopPub := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; ; i++ {
			select {
			case <-stopPub:
				return
			default:
			}
			pub.publish(streamEncode(streamMessages(1000+10*i, 10))...)
			published.Add(10)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	defer func() {
		select {
		case <-stopPub:
		default:
			close(stopPub)
		}
		<-pubDone
	}()

	rec := newStreamRecorder()
	starts := &logStarts{rec: rec}
	cfg.OnLogStart = starts.record
	s := NewStream(cfg, rec)
	testRun(t, s.Run)
	streamWaitReady(t, s)
	time.Sleep(300 * time.Millisecond) // live traffic after the warm-up
	close(stopPub)
	<-pubDone
	total := 100 + published.Load()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		got := rec.snapshot()
		if n := len(got); n > 0 && got[n-1].Offset == total-1 {
			break
		}
		select {
		case <-rec.changed:
		case <-ctx.Done():
			t.Fatalf("the last offset %d was not dispatched", total-1)
		}
	}
	time.Sleep(200 * time.Millisecond)
	got := rec.snapshot()
	for i := 1; i < len(got); i++ {
		if got[i].Offset != got[i-1].Offset+1 {
			t.Fatalf("dispatched offset %d after %d: want one contiguous run", got[i].Offset, got[i-1].Offset)
		}
	}
	calls := starts.get()
	if len(calls) != 1 || calls[0][0] != got[calls[0][1]-1].Offset {
		t.Errorf("OnLogStart: got %v, want the offset of the last message dispatched before it", calls)
	}
	t.Logf("warm-up: %d messages, through offset %d; then %d live", calls[0][1], calls[0][0], int64(len(got))-calls[0][1])
}

func TestStreamConfigStart(t *testing.T) {
	for _, tc := range []struct {
		start any
		want  string // "" when valid
	}{
		{nil, ""}, {"last", ""}, {"first", ""}, {int64(0), ""}, {time.Now(), ""},
		{"next", `Start "next"`}, {int64(-1), "negative"}, {7, "(int)"},
	} {
		err := StreamConfig{URL: "amqp://x/", Start: tc.start}.withDefaults().validate()
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Start %v: got %v, want an error containing %q", tc.start, err, tc.want)
		}
	}
}
