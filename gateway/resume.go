package gateway

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/heraldgw/herald/gateway/internal/catchup"
	"github.com/heraldgw/herald/gateway/internal/tail"
	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/producer/message"
)

// Log is the bus's ordered, retained history, read to resume clients whose since is older
// than what the gateway holds in memory (docs/PROTOCOL.md section 9).
type Log interface {
	// Replay calls fn with the retained messages after offset since (since -1: from the
	// oldest retained), in offset order, until fn returns false or ctx ends. A message
	// at or below since may come first (a log may start at a block boundary). Offsets
	// increase but may skip numbers; see Oldest. A message the bus could not decode
	// comes with only its Offset (nil Data): it keeps the offsets contiguous and is not
	// delivered. Replay may return nil at the end of what the log holds.
	Replay(ctx context.Context, since int64, fn func(message.Message) bool) error
	// Oldest returns the oldest offset the log retains, and false when it cannot tell
	// now. Offsets may skip numbers (a RabbitMQ stream gives an offset to each segment's
	// bookkeeping), so a replay whose first message is past since+1 asks it whether
	// since+1 was cut by retention or never was a message.
	Oldest(ctx context.Context) (int64, bool)
	// KnownNewest returns the log's newest offset when the bus knows it exactly without
	// asking a broker (the embedded bus, whose log is ahead of its dispatch), so that a
	// since beyond it is known at once to be from another life of the log; false where
	// only live delivery tells (RabbitMQ).
	KnownNewest() (int64, bool)
}

// resumer brings sessions up to date from an offset, at the client's pace, then hands the
// session over to live delivery with no gap and nothing twice (docs/PROTOCOL.md section
// 9). A since inside the hub's tail (at or after its edge) is served from memory, the
// frames live delivery shared, and the bus's log is not read; an older one is read from
// the log through the pool of shared readers (gateway/internal/catchup) up to a little
// inside the tail, and served from the tail from there. Its fields are set by NewServer
// and read-only after; its work runs on the goroutine of the session that asked.
type resumer struct {
	history Log // nil: the bus keeps none, and every resume is a reset
	hub     *Hub
	tail    *tail.Log[*wire.Frame]
	pool    *catchup.Pool[*wire.Frame] // nil when history is
	metrics *Metrics
	// extendEvery is how often a replay moves its session's read deadline on: the read
	// pump may be the one replaying.
	extendEvery time.Duration
}

// The sources of a resume, for herald_resumes_total.
const (
	resumeTail   = "tail"
	resumeStream = "stream"
	resumeReset  = "reset"
)

// insideMargin is how many entries inside the tail's edge a read of the log aims for, so
// that the entries evicted while its members hand over to the tail do not pass them.
const insideMargin = 1024

// newResumer returns the resumer of hub over history (nil: none), with at most readers
// reads of the log at once.
func newResumer(history Log, hub *Hub, m *Metrics, extendEvery time.Duration, readers int, logger *slog.Logger) (*resumer, error) {
	r := &resumer{history: history, hub: hub, tail: hub.Tail(), metrics: m, extendEvery: extendEvery}
	if history == nil {
		return r, nil
	}
	pool, err := catchup.New(catchup.Config[*wire.Frame]{
		Log:  history,
		Edge: func() (int64, bool) { return r.tail.Inside(insideMargin) },
		Prepare: func(msg message.Message) (*wire.Frame, int, bool) {
			// Guard 3 (see Hub.Dispatch): the reader stops inside the tail, below what
			// the hub has dispatched, so the hub has seen every duplicate it reads.
			if msg.Data == nil || hub.duplicate(msg.Offset) {
				return nil, 0, false
			}
			f := newMessageFrame(msg, time.Time{})
			return f, f.Size() + frameOverhead, true
		},
		Readers: readers,
		Logger:  logger,
		Hooks: catchup.Hooks{
			Waited:   m.ResumeWaited,
			Attached: m.ResumeReaderAttached,
		},
	})
	if err != nil {
		return nil, err
	}
	r.pool = pool
	return r, nil
}

// close ends the readers of the log.
func (r *resumer) close() {
	if r.pool != nil {
		r.pool.Close()
	}
}

// resumeWait bounds how long a resume waits for this gateway's live delivery to reach a
// since that it has not reached yet (the client comes from a gateway that was ahead).
const resumeWait = 2 * time.Second

// entryWants says whether a resuming client is given a held message.
type entryWants func(*tail.Entry[*wire.Frame]) bool

// replay brings c up to date from offset since: it replays the messages after since that
// wants accepts, at the client's pace, then hands c over to live delivery with handover,
// under the hub's lock, so that nothing is missed or sent twice. handover(at, reset)
// must join c at offset at (reporting false when live delivery has passed at) or, with
// reset, join it unconditionally and tell the client to reload.
//
// It runs on the goroutine of the client that asked, never on fan-out's.
func (r *resumer) replay(c *session, since int64, wants entryWants, handover func(at int64, reset bool) bool) {
	began := time.Now()
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
		r.metrics.ResumeDone(resumeReset, time.Since(began))
		handover(0, true)
	}
	if r.history == nil {
		reset("the bus keeps no log")
		return
	}
	if newest, exact := r.history.KnownNewest(); exact {
		// The log knows its head: a since up to it is valid, even past what the hub has
		// dispatched yet (joinAt then skips live delivery through since).
		if since > newest {
			reset("since is beyond the log")
			return
		}
	} else if newest, _ := r.hub.Newest(); since > newest && !r.waitFor(ctx, since) {
		// Only live delivery tells where this log stands: give it a moment to reach since
		// (the client comes from a gateway that was ahead), else since is not in the log.
		reset("since is beyond what this gateway has received")
		return
	}

	p := replayState{c: c, wants: wants, extended: time.Now()}
	cursor, source := since, resumeTail
	for ctx.Err() == nil && !c.Closing() {
		rd, err := r.tail.Read(cursor)
		if err != nil {
			// Older than the tail: read the log, with the other resumes near cursor.
			source = resumeStream
			to, err := r.fromLog(ctx, &p, cursor)
			switch {
			case errors.Is(err, catchup.ErrCaughtUp):
				cursor = to
				continue
			case errors.Is(err, catchup.ErrReset):
				reset(err.Error())
			}
			return // closed
		}
		switch r.fromTail(&p, &rd, handover) {
		case tailHanded:
			r.metrics.Resumed(true, p.replayed)
			r.metrics.ResumeDone(source, time.Since(began))
			return
		case tailClosed:
			return
		}
		cursor = rd.Through() // fell off the start of the tail: go on from the log
	}
}

// replayState is one replay's progress.
type replayState struct {
	c        *session
	wants    entryWants
	replayed int
	extended time.Time
}

// give queues e's frame to the client if it wants it; false when the connection closes.
func (p *replayState) give(e *tail.Entry[*wire.Frame], every time.Duration) bool {
	if time.Since(p.extended) > every {
		// The read pump may be the one replaying: keep its deadline moving.
		p.c.t.ExtendRead()
		p.extended = time.Now()
	}
	if e.Value == nil || !p.wants(e) {
		return true
	}
	if !p.c.enqueueReplay(e.Value) {
		return false
	}
	p.replayed++
	return true
}

// How a read of the tail ends.
const (
	tailHanded = iota // the client joined live delivery
	tailClosed        // the connection closes
	tailBehind        // the reader fell off the tail's start
)

// fromTail replays what rd reads, then hands the client over at the tail's end: under the
// hub's lock, the tail's newest is the hub's, so at rd.Through nothing is missed (it was
// read) and nothing comes twice (live delivery skips through it).
func (r *resumer) fromTail(p *replayState, rd *tail.Reader[*wire.Frame], handover func(int64, bool) bool) int {
	idle := 0
	for {
		e, err := rd.Next()
		if err != nil {
			return tailBehind
		}
		if e != nil {
			idle = 0
			if !p.give(e, r.extendEvery) {
				return tailClosed
			}
			continue
		}
		if handover(rd.Through(), false) {
			return tailHanded
		}
		if p.c.Closing() {
			return tailClosed
		}
		// A message came between the end of the read and the lock: read on. The tail
		// and the hub move together under the lock, so Next has it now; a position the
		// tail does not show yet is waited for briefly rather than spun on.
		if idle++; idle > 2 {
			time.Sleep(time.Millisecond)
		}
	}
}

// fromLog replays the log after since through the pool of shared readers until memory
// takes over (catchup.ErrCaughtUp: it returns the position the tail goes on from), the
// log no longer holds since (catchup.ErrReset) or the connection closes.
func (r *resumer) fromLog(ctx context.Context, p *replayState, since int64) (int64, error) {
	m := r.pool.Resume(since)
	defer m.Close()
	// While the member waits for a reader, or its reader for the log, keep the read
	// deadline moving: the read pump may be the one replaying.
	waiting := make(chan struct{})
	defer close(waiting)
	go func() {
		t := time.NewTicker(r.extendEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.c.t.ExtendRead()
			case <-waiting:
				return
			}
		}
	}()
	for {
		e, err := m.Next(ctx)
		if err != nil {
			return m.Position(), err
		}
		if !p.give(e, r.extendEvery) {
			return m.Position(), catchup.ErrClosed
		}
	}
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
	wants := func(e *tail.Entry[*wire.Frame]) bool { return reachesHeld(e.Users, e.Channel, c.user, channels) }
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
	wants := func(e *tail.Entry[*wire.Frame]) bool { return len(e.Users) == 0 && e.Channel == ch }
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
