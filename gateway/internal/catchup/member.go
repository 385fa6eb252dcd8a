package catchup

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/heraldgw/herald/gateway/internal/tail"
)

// Member is one client being caught up from the log. One goroutine reads it with Next;
// Close may be called from any.
type Member[V any] struct {
	p    *Pool[V]
	stop chan struct{} // closed by Close
	once sync.Once

	// Under p.mu: the pool's side.
	ticket   uint64        // its place in line: the order of first arrival
	since    int64         // where it waits to be read from
	queuedAt time.Time     // when it last got in line
	ready    chan struct{} // closed when it joins a group, or ends while in line
	g        *group[V]     // its group; nil while in line
	r        tail.Reader[V]
	end      error // set with ready when it ends while in line

	// The reading goroutine's own.
	cur      *group[V] // the group it reads; nil while it has none
	pos      int64     // it has been given everything through this offset
	done     error     // once set, Next answers it
	failures int       // reads of the log that failed under it
}

// Next returns the member's next message: an entry with an offset above the since it
// resumed from, in offset order, shared with its group (read it, never change it). It
// waits while the member waits for a reader, or its reader for the log. It ends with
// ErrCaughtUp (Position is where memory takes over), ErrReset (the log no longer holds
// what it needs), ErrClosed, or ctx's error (the member then leaves, as with Close).
func (m *Member[V]) Next(ctx context.Context) (*tail.Entry[V], error) {
	for {
		if m.done != nil {
			return nil, m.done
		}
		if m.stopped() {
			return nil, m.finish(ErrClosed)
		}
		if err := ctx.Err(); err != nil {
			return nil, m.finish(err)
		}
		g := m.cur
		if g == nil {
			var err error
			if g, err = m.await(ctx); err != nil {
				return nil, m.finish(err)
			}
		}
		e, err := m.r.Next()
		switch {
		case err != nil: // the buffer dropped what the member had not read yet
			m.fellBehind(g)
			continue
		case e != nil:
			m.pos = e.Offset
			g.advance(m.pos)
			return e, nil
		}
		// At the end of what the group's reader has read.
		m.pos = m.r.Through()
		g.advance(m.pos)
		wake := g.waitAfter(m.pos)
		if wake != nil {
			select {
			case <-wake:
			case <-m.stop:
			case <-ctx.Done():
				return nil, m.finish(ctx.Err())
			}
			continue
		}
		if g.buf.Newest() > m.pos {
			continue // more to read
		}
		m.ended(g)
	}
}

// await waits until the member is in a group and returns it, or why it ended in line.
func (m *Member[V]) await(ctx context.Context) (*group[V], error) {
	m.p.mu.Lock()
	ready := m.ready
	m.p.mu.Unlock()
	select {
	case <-ready:
	case <-m.stop:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	m.p.mu.Lock()
	defer m.p.mu.Unlock()
	if m.end != nil {
		return nil, m.end
	}
	m.cur = m.g
	return m.g, nil
}

// fellBehind handles a cursor that fell off g's buffer: the buffer restarted after a cut
// at or below the member's position (it reads on), retention cut what it needs (reset),
// or it was too slow for its group (memory takes over, or it waits again).
func (m *Member[V]) fellBehind(g *group[V]) {
	m.pos = m.r.Through()
	if r, err := g.buf.Read(m.pos); err == nil {
		m.r = r
		return
	}
	if cut := g.cut.Load(); m.pos < cut {
		m.finish(fmt.Errorf("%w: the log no longer holds offsets after %d (retention)", ErrReset, m.pos))
		return
	}
	if edge, ok := m.p.cfg.Edge(); ok && m.pos >= edge {
		m.finish(ErrCaughtUp)
		return
	}
	m.requeue("behind", false)
}

// ended handles the end of g's reader, once the member has read all it read.
func (m *Member[V]) ended(g *group[V]) {
	switch g.state.Load() {
	case caughtUp:
		m.finish(ErrCaughtUp)
	case closed:
		m.finish(ErrClosed)
	case failed:
		if m.failures++; m.failures >= 2 {
			m.finish(fmt.Errorf("%w: reading the log failed: %w", ErrReset, g.err))
			return
		}
		m.requeue("failed", false)
	case sliced:
		m.requeue("slice", true)
	default: // empty: it stopped for want of members as m joined; m keeps its place
		m.requeue("slice", false)
	}
}

// requeue puts the member in line again from its position: with its first arrival's
// place, or (newTicket) behind everyone waiting now.
func (m *Member[V]) requeue(why string, newTicket bool) {
	p := m.p
	p.mu.Lock()
	defer p.mu.Unlock()
	p.leave(m)
	m.cur = nil
	if p.closed || m.stopped() {
		m.done = ErrClosed
		return
	}
	if newTicket {
		p.tickets++
		m.ticket = p.tickets
	}
	if h := p.cfg.Hooks.Requeued; h != nil {
		h(why)
	}
	p.enqueue(m, m.pos)
}

// finish ends the member with err, out of its group or line, and returns err.
func (m *Member[V]) finish(err error) error {
	m.p.mu.Lock()
	m.p.leave(m)
	m.p.mu.Unlock()
	m.cur = nil
	m.done = err
	return err
}

// stopped reports whether Close was called.
func (m *Member[V]) stopped() bool {
	select {
	case <-m.stop:
		return true
	default:
		return false
	}
}

// Position returns the offset through which the member has been given everything (or
// was not meant to have it): after ErrCaughtUp, where the caller reads memory from. Call
// it from the goroutine that calls Next.
func (m *Member[V]) Position() int64 { return m.pos }

// Close takes the member out of its group or out of line; Next then answers ErrClosed.
// Any goroutine, any number of times.
func (m *Member[V]) Close() {
	m.once.Do(func() {
		m.p.mu.Lock()
		defer m.p.mu.Unlock()
		m.p.leave(m)
		close(m.stop) // under the lock: requeue sees it and does not put m in line again
	})
}
