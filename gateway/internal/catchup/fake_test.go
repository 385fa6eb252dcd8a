package catchup

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldgw/herald/gateway/internal/tail"
	"github.com/heraldgw/herald/producer/message"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeLog is a log in memory with the behaviours of the real ones that catch-up must
// handle: offsets that skip numbers, control messages (nil data), retention that cuts the
// oldest, reads that fail, and (stream) reads that wait at the end for more. It counts the
// reads and how many run at once.
type fakeLog struct {
	mu     sync.Mutex
	msgs   []message.Message // in offset order; msgs[cut:] are retained
	cut    int
	more   chan struct{} // closed and replaced when a message is added
	stream bool          // Replay waits at the end (a RabbitMQ stream); else returns (embedded)

	reads, running, maxRunning atomic.Int64
	sinces                     []int64 // the since of each read, in order (under mu)
	fail                       atomic.Int32

	// gate, when set, is received from before each message a read delivers.
	gate chan struct{}
	// onMessage, when set, is called (without mu) before each message is delivered.
	onMessage func(off int64)
}

// newFakeLog holds n messages at offsets 0, 1, 2, ... with every 7th number skipped and
// every 11th message a control message; data is the offset.
func newFakeLog(n int) *fakeLog {
	l := &fakeLog{more: make(chan struct{})}
	off := int64(0)
	for range n {
		if off%7 == 6 {
			off++
		}
		l.add(off)
		off++
	}
	return l
}

// add appends a message at off.
func (l *fakeLog) add(off int64) {
	m := message.Message{Offset: off, Channel: "c", ID: strconv.FormatInt(off, 10)}
	if off%11 != 10 {
		m.Data = []byte(strconv.FormatInt(off, 10))
	}
	l.mu.Lock()
	l.msgs = append(l.msgs, m)
	close(l.more)
	l.more = make(chan struct{})
	l.mu.Unlock()
}

// retainFrom cuts every message below off.
func (l *fakeLog) retainFrom(off int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.cut < len(l.msgs) && l.msgs[l.cut].Offset < off {
		l.cut++
	}
}

// deliverable returns the offsets of the messages with data in (after, through].
func (l *fakeLog) deliverable(after, through int64) []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int64
	for _, m := range l.msgs {
		if m.Offset > after && m.Offset <= through && m.Data != nil {
			out = append(out, m.Offset)
		}
	}
	return out
}

func (l *fakeLog) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
	l.reads.Add(1)
	n := l.running.Add(1)
	defer l.running.Add(-1)
	for {
		cur := l.maxRunning.Load()
		if n <= cur || l.maxRunning.CompareAndSwap(cur, n) {
			break
		}
	}
	l.mu.Lock()
	l.sinces = append(l.sinces, since)
	l.mu.Unlock()
	if l.fail.Load() > 0 && l.fail.Add(-1) >= 0 {
		return errors.New("fake log: the broker went away")
	}
	next := since + 1 // the first offset wanted
	for {
		l.mu.Lock()
		i := l.cut + sort.Search(len(l.msgs)-l.cut, func(k int) bool { return l.msgs[l.cut+k].Offset >= next })
		var m message.Message
		found := i < len(l.msgs)
		if found {
			m = l.msgs[i]
		}
		more := l.more
		l.mu.Unlock()
		if !found {
			if !l.stream {
				return nil
			}
			select {
			case <-more:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if l.gate != nil {
			select {
			case <-l.gate:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if l.onMessage != nil {
			l.onMessage(m.Offset)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !fn(m) {
			return nil
		}
		next = m.Offset + 1
	}
}

func (l *fakeLog) Oldest(context.Context) (int64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut < len(l.msgs) {
		return l.msgs[l.cut].Offset, true
	}
	return 0, false
}

// edge is a settable Config.Edge.
type edge struct{ off atomic.Int64 }

func newEdge(off int64) *edge {
	e := &edge{}
	e.off.Store(off)
	return e
}

// noEdge makes an edge that is not known: memory holds nothing yet.
const noEdge = math.MinInt64

func (e *edge) get() (int64, bool) {
	off := e.off.Load()
	return off, off != noEdge
}

// prepare gives members the message itself, 100 bytes, unless it has no data.
func prepare(m message.Message) (message.Message, int, bool) {
	return m, 100, m.Data != nil
}

// counts are what the hooks were told.
type counts struct {
	mu       sync.Mutex
	waited   []time.Duration
	attached int
	requeued map[string]int
	longWait int
	failed   int
}

func (c *counts) hooks() Hooks {
	c.requeued = map[string]int{}
	return Hooks{
		Waited:     func(d time.Duration) { c.mu.Lock(); c.waited = append(c.waited, d); c.mu.Unlock() },
		Attached:   func() { c.mu.Lock(); c.attached++; c.mu.Unlock() },
		Requeued:   func(why string) { c.mu.Lock(); c.requeued[why]++; c.mu.Unlock() },
		LongWait:   func() { c.mu.Lock(); c.longWait++; c.mu.Unlock() },
		ReadFailed: func() { c.mu.Lock(); c.failed++; c.mu.Unlock() },
	}
}

func (c *counts) get() (attached int, requeued map[string]int, longWait, failed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attached, maps(c.requeued), c.longWait, c.failed
}

func maps(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// syncBuffer is a log destination two goroutines may write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newPool makes a pool on l with edge e, closed when the test ends; cfg's zero fields get
// the test's defaults.
func newPool(t *testing.T, l *fakeLog, e *edge, cfg Config[message.Message]) (*Pool[message.Message], *counts, *syncBuffer) {
	t.Helper()
	c := &counts{}
	logs := &syncBuffer{}
	cfg.Log, cfg.Edge, cfg.Prepare, cfg.Hooks = l, e.get, prepare, c.hooks()
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, c, logs
}

// result is how one member's catch-up went.
type result struct {
	since int64
	got   []int64 // offsets given, in order
	err   error
	pos   int64
}

// drain reads m to its end; before each Next it calls pause (when not nil) with how many
// entries it has had.
func drain(m *Member[message.Message], since int64, pause func(n int)) result {
	r := result{since: since}
	for {
		if pause != nil {
			pause(len(r.got))
		}
		e, err := m.Next(context.Background())
		if err != nil {
			r.err, r.pos = err, m.Position()
			m.Close()
			return r
		}
		r.got = append(r.got, e.Offset)
		checkEntry(e, &r)
	}
}

// checkEntry records a bad entry as the result's error.
func checkEntry(e *tail.Entry[message.Message], r *result) {
	if e.Value.Offset != e.Offset || e.Value.Data == nil || e.Channel != "c" {
		r.err = errors.New("entry " + strconv.FormatInt(e.Offset, 10) + " does not hold its message")
	}
}

// checkCaughtUp checks that r ended caught up at or past edge, with every deliverable
// message after its since through its position once, in order.
func checkCaughtUp(t *testing.T, l *fakeLog, r result, edge int64) {
	t.Helper()
	if !errors.Is(r.err, ErrCaughtUp) {
		t.Fatalf("member since %d: ended with %v after %d entries, want ErrCaughtUp", r.since, r.err, len(r.got))
	}
	if r.pos < edge && r.pos < r.since {
		t.Fatalf("member since %d: caught up at %d, before the edge %d", r.since, r.pos, edge)
	}
	if want := l.deliverable(r.since, r.pos); !slices.Equal(r.got, want) {
		t.Fatalf("member since %d through %d: got %d entries, want %d (first got %v, want %v)",
			r.since, r.pos, len(r.got), len(want), r.got[:min(len(r.got), 5)], want[:min(len(want), 5)])
	}
}

// within waits for done, failing the test (rather than hanging it) after a long while:
// a liveness check, not a measure of speed.
func within(t *testing.T, what string, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: not done after 30s", what)
	}
}
