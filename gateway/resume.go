package gateway

import (
	"context"
	"time"

	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/producer/message"
)

// Log is the bus's ordered, retained history, read to resume clients (docs/PROTOCOL.md
// section 9).
type Log interface {
	// Replay calls fn with the retained messages after offset since (since -1: from the
	// oldest retained), in offset order, until fn returns false or ctx ends. A message
	// at or below since may come first (a log may start at a block boundary). Offsets
	// increase but may skip numbers; see oldestLog. A message the bus could not decode
	// comes with only its Offset (nil Data): it keeps the offsets contiguous and is not
	// delivered. Replay may return nil at the end of what the log holds.
	Replay(ctx context.Context, since int64, fn func(message.Message) bool) error
}

// oldestLog is a Log that can tell the oldest offset it retains. Offsets increase but may
// skip numbers (a RabbitMQ stream gives an offset to each segment's bookkeeping), so a
// replay whose first message is past since+1 asks it whether since+1 was cut by
// retention or never was a message.
type oldestLog interface {
	Oldest(ctx context.Context) (int64, bool)
}

// newestLog is a Log that knows its newest offset exactly (the embedded bus), so that a
// since beyond it is known at once to be from another life of the log.
type newestLog interface {
	Newest() int64
}

// resumer brings sessions up to date from an offset: it replays the bus's history, at the
// client's pace, then hands the session over to live delivery with no gap and nothing
// twice (docs/PROTOCOL.md section 9). Its fields are set by NewServer and read-only after;
// its work runs on the goroutine of the session that asked.
type resumer struct {
	history Log // nil: the bus keeps none, and every resume is a reset
	hub     *Hub
	metrics *Metrics
	// extendEvery is how often a replay moves its session's read deadline on: the read
	// pump may be the one replaying.
	extendEvery time.Duration
}

// resumeWait bounds how long a resume waits for this gateway's live delivery to reach a
// since that it has not reached yet (the client comes from a gateway that was ahead).
const resumeWait = 2 * time.Second

// replay brings c up to date from offset since: it replays the log's messages after
// since that wants accepts, at the client's pace, then hands c over to live delivery with
// handover, under the hub's lock, so that nothing is missed or sent twice. handover(at,
// reset) must join c at offset at (reporting false when live delivery has passed at) or,
// with reset, join it unconditionally and tell the client to reload.
//
// It runs on the goroutine of the client that asked, never on fan-out's.
func (r *resumer) replay(c *session, since int64, wants func(*message.Message) bool, handover func(at int64, reset bool) bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.Done():
			cancel()
		case <-ctx.Done():
		}
	}()

	reset := func(why string) {
		c.log.Debug("resume: reset", "since", since, "why", why)
		r.metrics.Resumed(false, 0)
		handover(0, true)
	}
	if r.history == nil {
		reset("the bus keeps no log")
		return
	}
	if nl, ok := r.history.(newestLog); ok {
		// The log knows its head: a since up to it is valid, even past what the hub has
		// dispatched yet (joinAt then skips live delivery through since).
		if since > nl.Newest() {
			reset("since is beyond the log")
			return
		}
	} else if newest, _ := r.hub.Newest(); since > newest && !r.waitFor(ctx, since) {
		// Only live delivery tells where this log stands: give it a moment to reach since
		// (the client comes from a gateway that was ahead), else since is not in the log.
		reset("since is beyond what this gateway has received")
		return
	}

	cursor, replayed, extended := since, 0, time.Now()
	seen := make(map[string]struct{}) // ids replayed, for messages live delivery has not deduplicated yet
	for ctx.Err() == nil {
		if handover(cursor, false) {
			r.metrics.Resumed(true, replayed)
			return
		}
		truncated, handed, progressed, closed := false, false, false, false
		err := r.history.Replay(ctx, cursor, func(m message.Message) bool {
			if m.Offset <= cursor {
				return true
			}
			// A jump past cursor+1 is a cut by retention (the log moved on under a slow
			// replay, or since is too old), or offsets that skip numbers: ask the log. The
			// first message of a replay of everything (since -1) may start anywhere.
			if m.Offset > cursor+1 && !(since == -1 && cursor == -1) && r.cutByRetention(ctx, cursor) {
				truncated = true
				return false
			}
			cursor, progressed = m.Offset, true
			if time.Since(extended) > r.extendEvery {
				// The read pump may be the one replaying: keep its deadline moving.
				c.t.ExtendRead()
				extended = time.Now()
			}
			if m.Data != nil && wants(&m) && !r.hub.duplicate(m.Offset) && !seenID(seen, m.ID) {
				f := newMessageFrame(m, time.Time{})
				f.Replayed = true
				if !c.enqueueReplay(f) {
					closed = true // the connection is closing: stop
					return false
				}
				replayed++
			}
			if newest, _ := r.hub.Newest(); cursor >= newest && handover(cursor, false) {
				handed = true
				return false
			}
			return true
		})
		switch {
		case closed || c.Closing():
			return
		case handed:
			r.metrics.Resumed(true, replayed)
			return
		case truncated:
			reset("since is older than the retained log")
			return
		case err != nil && ctx.Err() == nil:
			c.log.Warn("resume: replay failed", "err", err)
			reset("replay failed")
			return
		case !progressed:
			time.Sleep(10 * time.Millisecond) // the log has not caught up with live delivery yet
		}
	}
}

// cutByRetention reports whether the log no longer holds what came after since: its
// oldest retained offset is past since+1 (or, where the log cannot tell, assumes so).
func (r *resumer) cutByRetention(ctx context.Context, since int64) bool {
	ol, ok := r.history.(oldestLog)
	if !ok {
		return true
	}
	oldest, known := ol.Oldest(ctx)
	return !known || oldest > since+1
}

// seenID reports whether id is in seen, and adds it.
func seenID(seen map[string]struct{}, id string) bool {
	if id == "" {
		return false
	}
	if _, ok := seen[id]; ok {
		return true
	}
	seen[id] = struct{}{}
	return false
}

// waitFor waits, up to resumeWait, until live delivery has reached offset.
func (r *resumer) waitFor(ctx context.Context, offset int64) bool {
	deadline := time.Now().Add(resumeWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if newest, _ := r.hub.Newest(); newest >= offset {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// connect resumes a new session from since, for its user and channels, and then joins it
// to the hub.
func (r *resumer) connect(c *session, since int64, channels []string) {
	wants := func(m *message.Message) bool { return reaches(m, c.user, channels) }
	r.replay(c, since, wants, func(at int64, reset bool) bool {
		if reset {
			r.hub.join(c, channels, func(newest int64, _ bool) {
				c.Enqueue(wire.Reply(resetFrame{Op: "reset", Offset: newest}))
			})
			return true
		}
		return r.hub.joinAt(c, channels, at, func() {
			c.Enqueue(wire.Reply(resumedFrame{Op: "resumed", Since: since, Until: at}))
		})
	})
}

// channel subscribes c to ch from since: it replays ch's messages after since, then
// subscribes c live (with watch, to its presence events too).
func (r *resumer) channel(c *session, ch string, since int64, watch bool) {
	wants := func(m *message.Message) bool { return routedTo(m, ch) }
	r.replay(c, since, wants, func(at int64, reset bool) bool {
		if reset {
			return r.hub.subscribe(c, ch, watch, func() {
				newest, _ := r.hub.Newest()
				c.Enqueue(wire.Reply(resetFrame{Op: "reset", Offset: newest, Channel: ch}))
			})
		}
		return r.hub.subscribeAt(c, ch, at, watch, func() {
			c.Enqueue(wire.Reply(resumedFrame{Op: "resumed", Since: since, Until: at, Channel: ch}))
		})
	})
}
