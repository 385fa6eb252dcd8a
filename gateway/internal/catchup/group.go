package catchup

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/gateway/internal/tail"
	"github.com/heraldgw/herald/producer/message"
)

// groupState is where a group's reader is.
type groupState = int32

const (
	reading  groupState = iota // the reader reads
	caughtUp                   // it reached the edge: members hand over when they reach its end
	sliced                     // its turn ended while others waited: members wait again
	failed                     // the log could not be read: members wait again, or reset
	closed                     // the pool closed
	empty                      // no member was left to read for
)

// group is the members one reader of the log serves, and the buffer it fills for them.
// The reader goroutine (run) is the buffer's only appender; members read it each with
// their own tail.Reader.
type group[V any] struct {
	p     *Pool[V]
	buf   *tail.Log[V]
	start int64 // the reader reads after this offset

	// ctx ends the reader's read of the log: the pool closed, or stop was called.
	ctx    context.Context
	cancel context.CancelFunc

	// state goes once from reading to why the group ended: by the reader (caughtUp,
	// failed, closed) after its last append, or by stop (sliced, empty) from anywhere.
	state   atomic.Int32
	err     error        // why the reader failed; written before state becomes failed
	members atomic.Int64 // members in the group
	lead    atomic.Int64 // the furthest position a member has read to
	// cut is the offset below which members need messages that retention cut from the
	// log while (or before) the reader read it; math.MinInt64: none.
	cut atomic.Int64

	// paused is set while the reader waits for its fastest member to read on; members
	// then nudge it through progress (room for one signal).
	paused   atomic.Bool
	progress chan struct{}

	// mu protects wake, waiters and slice: members at the end of the buffer wait on wake,
	// which the reader closes (and replaces) when it appends, and anyone when the state
	// changes.
	mu      sync.Mutex
	wake    chan struct{}
	waiters int
	slice   *time.Timer // ends the group's turn while others wait
}

func newGroup[V any](p *Pool[V], start int64) *group[V] {
	g := &group[V]{
		p:        p,
		buf:      tail.New[V](tail.Config{MaxBytes: p.cfg.BufferBytes, MaxAge: math.MaxInt64}),
		start:    start,
		progress: make(chan struct{}, 1),
		wake:     make(chan struct{}),
	}
	g.ctx, g.cancel = context.WithCancel(p.ctx)
	g.buf.Reset(start)
	g.lead.Store(start)
	g.cut.Store(math.MinInt64)
	return g
}

// sliceOver runs Slice after the reader began, and every Slice after: while members wait
// in line, the group's turn is over.
func (g *group[V]) sliceOver() {
	if g.p.lineLen() > 0 {
		g.stop(sliced)
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state.Load() == reading {
		g.slice.Reset(g.p.cfg.Slice)
	}
}

func (p *Pool[V]) lineLen() int64 { return p.waiting.Load() }

// stop ends the group for why (sliced, empty) unless it has ended already, and ends its
// reader's read of the log. Any goroutine.
func (g *group[V]) stop(why groupState) {
	g.mu.Lock()
	if g.state.CompareAndSwap(reading, why) {
		g.wakeLocked()
	}
	g.mu.Unlock()
	g.cancel()
}

// run is the group's reader: it reads the log after start into the buffer until its
// members reach the edge, it has none left, its turn is over, the log fails or the pool
// closes.
func (g *group[V]) run() {
	defer g.p.readerDone(g)
	defer g.cancel()
	g.mu.Lock()
	g.slice = time.AfterFunc(g.p.cfg.Slice, g.sliceOver)
	g.mu.Unlock()
	ctx := g.ctx
	pos, read := g.start, 0
	for {
		end, progressed := groupState(reading), false
		err := g.p.cfg.Log.Replay(ctx, pos, func(m message.Message) bool {
			if m.Offset <= pos {
				return true // a log may start at a block boundary
			}
			// A jump is a cut by retention, or offsets that skip numbers: ask the log. The
			// first message of a read of everything (after -1) may start anywhere.
			if m.Offset > pos+1 && !(pos == -1 && g.start == -1) {
				g.checkCut(ctx, pos, m.Offset)
			}
			v, size, deliver := g.p.cfg.Prepare(m)
			_ = g.buf.Append(tail.Entry[V]{Offset: m.Offset, Size: size, Channel: m.Channel, Users: m.Users, Control: !deliver, Value: v})
			pos, progressed = m.Offset, true
			read++
			g.wakeMembers()
			if edge, ok := g.p.cfg.Edge(); ok && pos >= edge {
				end = caughtUp
				return false
			}
			if read%joinCheckEvery == 0 && g.p.lineLen() > 0 {
				g.p.joinWaiting(g)
			}
			return g.pace(ctx)
		})
		switch {
		case end != reading:
		case ctx.Err() != nil || g.state.Load() != reading:
			end = closed // or what stop set: finish keeps that
		case err != nil:
			g.err = err
			end = failed
		case !progressed:
			// At the end of what the log holds: the edge may have come to where the
			// reader is, or live delivery is ahead of what this read of the log sees.
			if edge, ok := g.p.cfg.Edge(); ok && pos >= edge {
				end = caughtUp
				break
			}
			// Or the log holds nothing after pos because retention (or a bus that keeps
			// only what it has not dispatched) cut it: those below the cut reset.
			if oldest, known := g.p.cfg.Log.Oldest(ctx); known && oldest > pos+1 {
				g.cut.Store(oldest - 1)
				g.buf.Reset(oldest - 1)
				pos = oldest - 1
				g.wakeMembers()
				continue
			}
			select {
			case <-time.After(retryRead):
			case <-ctx.Done():
			}
		}
		if end != reading {
			g.finish(end)
			return
		}
	}
}

// checkCut asks the log whether the jump from pos to next is a cut by retention; if so,
// members below the cut reset, and the buffer starts again after it.
func (g *group[V]) checkCut(ctx context.Context, pos, next int64) {
	oldest, known := g.p.cfg.Log.Oldest(ctx)
	if known && oldest <= pos+1 {
		return // offsets that skip numbers: nothing is missing
	}
	cut := next - 1 // the log cannot tell: assume everything before next is gone
	if known {
		cut = min(oldest, next) - 1
	}
	g.cut.Store(cut)
	g.buf.Reset(cut) // members' cursors fall behind; those at or past cut read on
}

// pace decides whether the reader reads on: while the buffer is less than half full, and
// beyond that while the fastest member is in its newer half; else it waits for a member to
// read on. It reports false when the reader should stop.
func (g *group[V]) pace(ctx context.Context) bool {
	half := g.p.cfg.BufferBytes / 2
	for {
		if ctx.Err() != nil || g.state.Load() != reading {
			return false
		}
		st := g.buf.Stats()
		if st.Bytes < half {
			return true
		}
		mid, _ := g.buf.Inside(st.Entries / 2)
		if g.lead.Load() >= mid {
			return true
		}
		g.paused.Store(true)
		if g.lead.Load() >= mid { // moved before paused was seen
			g.paused.Store(false)
			continue
		}
		select {
		case <-g.progress:
		case <-ctx.Done():
		}
		g.paused.Store(false)
	}
}

// finish ends the group (unless stop did already) and wakes its members to see it. A
// failure is logged and counted before members can see it.
func (g *group[V]) finish(s groupState) {
	if s == failed && g.state.Load() == reading {
		g.p.log.Warn("catch-up: reading the log failed", "after", g.start, "members", g.members.Load(), "err", g.err)
		if h := g.p.cfg.Hooks.ReadFailed; h != nil {
			h()
		}
	}
	g.mu.Lock()
	if g.state.CompareAndSwap(reading, s) {
		g.wakeLocked()
	}
	g.slice.Stop()
	g.mu.Unlock()
}

// wakeMembers wakes the members waiting at the end of the buffer.
func (g *group[V]) wakeMembers() {
	g.mu.Lock()
	g.wakeLocked()
	g.mu.Unlock()
}

func (g *group[V]) wakeLocked() {
	if g.waiters > 0 {
		close(g.wake)
		g.wake = make(chan struct{})
		g.waiters = 0
	}
}

// waitAfter returns a channel that is closed when the buffer holds more than through or
// the group ends; nil when one of them is true already (the caller looks again).
func (g *group[V]) waitAfter(through int64) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.buf.Newest() > through || g.state.Load() != reading {
		return nil
	}
	g.waiters++
	return g.wake
}

// advance records that a member has read up to pos, and nudges a paused reader.
func (g *group[V]) advance(pos int64) {
	for {
		cur := g.lead.Load()
		if pos <= cur || g.lead.CompareAndSwap(cur, pos) {
			break
		}
	}
	if g.paused.Load() {
		g.nudge()
	}
}

// nudge tells a paused reader to look again.
func (g *group[V]) nudge() {
	select {
	case g.progress <- struct{}{}:
	default:
	}
}
