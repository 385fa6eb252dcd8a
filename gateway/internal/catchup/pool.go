package catchup

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/producer/message"
)

// Log is the bus's retained log, as catch-up reads it.
type Log interface {
	// Replay calls fn with the retained messages after offset since (since -1: from the
	// oldest retained), in offset order, until fn returns false or ctx ends. A message at
	// or below since may come first. Offsets increase but may skip numbers. Replay may
	// return nil at the end of what the log holds.
	Replay(ctx context.Context, since int64, fn func(message.Message) bool) error
	// Oldest returns the oldest offset the log retains, and false when it cannot tell.
	Oldest(ctx context.Context) (int64, bool)
}

// Errors that end a member's catch-up; callers match them with errors.Is.
var (
	// ErrCaughtUp: the member has been given everything through Position, which memory
	// holds from there on: continue from the tail (see the package doc).
	ErrCaughtUp = errors.New("catchup: caught up")
	// ErrReset: the log no longer holds what the member needs (or could not be read):
	// its client must reload its state.
	ErrReset = errors.New("catchup: reset")
	// ErrClosed: the member or the pool was closed.
	ErrClosed = errors.New("catchup: closed")
)

// Defaults of Config's zero fields.
const (
	DefaultReaders     = 8
	DefaultWindow      = 5000
	DefaultBufferBytes = 2 << 20
	DefaultSlice       = 10 * time.Second
)

// longWait is how long a member may wait for a reader before the pool says so in its log.
const longWait = time.Second

// longWaitEvery is how often, at most, the pool logs that members wait long.
const longWaitEvery = 10 * time.Second

// retryRead is how long a reader that reached the end of the log, short of the edge,
// waits before it reads again (live delivery is ahead of what the log shows it).
const retryRead = 10 * time.Millisecond

// joinCheckEvery is how often (in messages read) a reader lets waiting members join it.
const joinCheckEvery = 64

// Config configures a Pool. Log, Edge and Prepare are required.
type Config[V any] struct {
	// Log is what readers read.
	Log Log
	// Edge returns the offset from which memory takes over: a reader stops, and its
	// members are caught up, once they reach it. false while memory holds nothing yet:
	// readers then read on as messages come.
	Edge func() (int64, bool)
	// Prepare makes what members are given of a message read from the log, once per
	// reader for all its members (the encoded frame): its value, the bytes it holds
	// (counted against BufferBytes), and whether members are given it at all (false for
	// a control message or one that could not be decoded: it only moves the position).
	Prepare func(message.Message) (v V, size int, deliver bool)
	// Readers bounds the readers of the log at once. Default 8.
	Readers int
	// Window is how far apart (in offsets) sinces may be to share a reader. Default
	// 5,000 (see the package doc).
	Window int64
	// BufferBytes bounds what one reader holds for its members, and so how far behind
	// the fastest member a slow one may fall before it leaves the group. Default 2 MiB.
	BufferBytes int64
	// Slice is how long a reader serves one group while others wait. Default 10 s.
	Slice time.Duration
	// Logger receives the pool's logs. Default: discard.
	Logger *slog.Logger
	// Hooks are told what happens, for metrics. Each may be nil.
	Hooks Hooks
}

// Hooks are the pool's callbacks for metrics (the pool registers none itself). All but
// ReadFailed are called with the pool's lock held: quick, and never calling back into the
// pool.
type Hooks struct {
	// Waited: a member got a reader after waiting d for one (0: it joined a running one).
	Waited func(d time.Duration)
	// Attached: a reader attached to the log (a read of the stream).
	Attached func()
	// Requeued: a member waits again: why is "behind" (it fell off its group's buffer),
	// "slice" (its group's turn ended while others waited) or "failed" (its reader failed).
	Requeued func(why string)
	// LongWait: the pool logged that members have waited longer than a second.
	LongWait func()
	// ReadFailed: a reader's read of the log failed (and was logged).
	ReadFailed func()
}

// Stats is the pool's state at one moment.
type Stats struct {
	Waiting int // members waiting for a reader
	Readers int // readers reading
	Members int // members in groups
}

// Pool runs the readers of the log and the line of members waiting for one.
type Pool[V any] struct {
	cfg Config[V]
	log *slog.Logger

	ctx    context.Context // ends every reader at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the readers

	waiting atomic.Int64 // len(queue), for readers to read without the lock

	// mu protects everything below, and each Member's pool-side fields.
	mu      sync.Mutex
	queue   []*Member[V]           // waiting members, by ticket
	groups  map[*group[V]]struct{} // groups whose reader runs
	tickets uint64                 // the last ticket given
	closed  bool                   // Close was called
	members int                    // members in groups
	timer   *time.Timer            // checks for long waits while the queue is not empty
	warned  time.Time              // when a long wait was last logged; zero: not since the queue drained
	longest time.Duration          // the longest wait since the first long-wait line
	served  int                    // members served since the first long-wait line
}

// New returns a Pool, or an error when a required field of cfg is missing. Close it to
// end its readers.
func New[V any](cfg Config[V]) (*Pool[V], error) {
	if cfg.Log == nil || cfg.Edge == nil || cfg.Prepare == nil {
		return nil, errors.New("catchup: new pool: Log, Edge and Prepare are required")
	}
	if cfg.Readers <= 0 {
		cfg.Readers = DefaultReaders
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.BufferBytes <= 0 {
		cfg.BufferBytes = DefaultBufferBytes
	}
	if cfg.Slice <= 0 {
		cfg.Slice = DefaultSlice
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool[V]{cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel, groups: make(map[*group[V]]struct{})}, nil
}

// Resume starts catching a client up from since. It never blocks: the member has joined a
// running reader, or waits for one, or is done already (its since is at the edge: Next
// answers ErrCaughtUp). The caller reads it with Next and closes it with Close.
func (p *Pool[V]) Resume(since int64) *Member[V] {
	m := &Member[V]{p: p, pos: since, stop: make(chan struct{})}
	if edge, ok := p.cfg.Edge(); ok && since >= edge {
		m.done = ErrCaughtUp
		return m
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		m.done = ErrClosed
		return m
	}
	p.tickets++
	m.ticket = p.tickets
	p.enqueue(m, since)
	return m
}

// enqueue puts m in line for a reader from since, unless it can join a running reader at
// once, and starts readers for the line where some are free. p.mu must be held.
func (p *Pool[V]) enqueue(m *Member[V], since int64) {
	m.since, m.ready, m.queuedAt = since, make(chan struct{}), time.Now()
	for g := range p.groups {
		if p.join(g, m, 0) {
			return
		}
	}
	i, _ := slices.BinarySearchFunc(p.queue, m.ticket, func(q *Member[V], t uint64) int {
		return cmpTicket(q.ticket, t)
	})
	p.queue = slices.Insert(p.queue, i, m)
	p.waiting.Store(int64(len(p.queue)))
	p.schedule()
	if len(p.queue) > 0 && p.timer == nil {
		p.timer = time.AfterFunc(longWait, p.checkWaits)
	}
}

func cmpTicket(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// join adds m to g if g still holds everything after m's since and m's since is within
// Window of where g's reader is; waited is how long m waited. p.mu must be held.
func (p *Pool[V]) join(g *group[V], m *Member[V], waited time.Duration) bool {
	if g.state.Load() != reading || m.since > g.buf.Newest()+p.cfg.Window || !sameKind(m.since, g.start) {
		return false
	}
	return p.assign(g, m, waited)
}

// assign makes m a member of g, reading its buffer after m's since, if the buffer holds
// everything after it. p.mu must be held.
func (p *Pool[V]) assign(g *group[V], m *Member[V], waited time.Duration) bool {
	r, err := g.buf.Read(m.since)
	if err != nil {
		return false
	}
	m.g, m.r = g, r
	g.members.Add(1)
	p.members++
	close(m.ready)
	if h := p.cfg.Hooks.Waited; h != nil {
		h(waited)
	}
	return true
}

// schedule starts readers for the members in line while some are free. p.mu must be held.
func (p *Pool[V]) schedule() {
	for len(p.queue) > 0 && len(p.groups) < p.cfg.Readers && !p.closed {
		head := p.queue[0]
		start := head.since
		var group, rest []*Member[V]
		for _, m := range p.queue {
			if abs(m.since-head.since) <= p.cfg.Window && sameKind(m.since, head.since) {
				group = append(group, m)
				start = min(start, m.since)
			} else {
				rest = append(rest, m)
			}
		}
		g := newGroup(p, start)
		now := time.Now()
		for _, m := range group {
			waited := now.Sub(m.queuedAt)
			if !p.assign(g, m, waited) { // never: the buffer holds everything after start
				rest = append(rest, m)
				continue
			}
			p.noteServed(waited)
		}
		clear(p.queue[len(rest):])
		p.queue = append(p.queue[:0], rest...)
		p.waiting.Store(int64(len(p.queue)))
		p.startGroup(g)
	}
}

// sameKind reports whether members with these sinces may share a reader: a since of -1
// (everything retained, wherever the log now starts) never shares one with a since of an
// offset, for which a log that starts later than since+1 is a cut.
func sameKind(a, b int64) bool { return (a == -1) == (b == -1) }

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// startGroup starts a reader of the log for g, whose first members are in. p.mu must be
// held.
func (p *Pool[V]) startGroup(g *group[V]) {
	p.groups[g] = struct{}{}
	if h := p.cfg.Hooks.Attached; h != nil {
		h()
	}
	p.wg.Go(g.run)
}

// readerDone is called by g's reader when it stops: its slot goes to the line.
func (p *Pool[V]) readerDone(g *group[V]) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.groups, g)
	p.schedule()
}

// joinWaiting lets the members in line that g can serve now join it: called by g's reader
// as it goes. The others keep their place.
func (p *Pool[V]) joinWaiting(g *group[V]) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	kept := p.queue[:0]
	for _, m := range p.queue {
		if waited := now.Sub(m.queuedAt); p.join(g, m, waited) {
			p.noteServed(waited)
		} else {
			kept = append(kept, m)
		}
	}
	clear(p.queue[len(kept):])
	p.queue = kept
	p.waiting.Store(int64(len(p.queue)))
}

// leave takes m out of its group or out of the line. p.mu must be held.
func (p *Pool[V]) leave(m *Member[V]) {
	if g := m.g; g != nil {
		m.g = nil
		p.members--
		if g.members.Add(-1) == 0 {
			g.stop(empty) // no one to read for
		}
		return
	}
	if i := slices.Index(p.queue, m); i >= 0 {
		p.queue = slices.Delete(p.queue, i, i+1)
		p.waiting.Store(int64(len(p.queue)))
	}
}

// noteServed records, for the long-wait log lines, that a member waited d. p.mu must be
// held.
func (p *Pool[V]) noteServed(d time.Duration) {
	if !p.warned.IsZero() {
		p.served++
		p.longest = max(p.longest, d)
	}
}

// checkWaits runs on a timer while members wait: it logs (at most every longWaitEvery)
// when one has waited longer than longWait, and once the line is empty again, how long
// the longest wait was.
func (p *Pool[V]) checkWaits() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.timer = nil
	if p.closed {
		return
	}
	now := time.Now()
	if len(p.queue) == 0 {
		if !p.warned.IsZero() {
			p.log.Info("catch-up: resumes no longer wait for a reader of the log",
				"longest_wait", p.longest.Round(time.Millisecond), "served", p.served)
			p.warned, p.longest, p.served = time.Time{}, 0, 0
		}
		return
	}
	oldest := now
	for _, m := range p.queue {
		if m.queuedAt.Before(oldest) {
			oldest = m.queuedAt
		}
	}
	next := longWait
	if wait := now.Sub(oldest); wait > longWait {
		p.longest = max(p.longest, wait)
		if p.warned.IsZero() || now.Sub(p.warned) >= longWaitEvery {
			p.warned = now
			p.log.Warn("catch-up: resumes are waiting for a reader of the log",
				"waiting", len(p.queue), "longest_wait", wait.Round(time.Millisecond),
				"readers", len(p.groups), "max_readers", p.cfg.Readers)
			if h := p.cfg.Hooks.LongWait; h != nil {
				h()
			}
		}
	} else {
		next = longWait - wait
	}
	p.timer = time.AfterFunc(next, p.checkWaits)
}

// Stats returns the pool's state, for metrics.
func (p *Pool[V]) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Waiting: len(p.queue), Readers: len(p.groups), Members: p.members}
}

// Close ends every reader and every member (Next answers ErrClosed), and waits for the
// readers to stop.
func (p *Pool[V]) Close() {
	p.mu.Lock()
	p.closed = true
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	for _, m := range p.queue {
		m.end = ErrClosed
		close(m.ready)
	}
	p.queue = nil
	p.waiting.Store(0)
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
}
