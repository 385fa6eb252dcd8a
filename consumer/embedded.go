package consumer

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/heraldgw/herald/producer/message"
)

// EmbeddedConfig configures the embedded bus.
type EmbeddedConfig struct {
	// RetainMessages is how many messages may wait between their publish and their
	// dispatch; past it, the oldest are skipped (OnLagged). Default 10000. (The history
	// kept for resume is the gateway's tail of the log, bounded by the same settings.)
	RetainMessages int
	// RetainBytes caps the bytes of data waiting between publish and dispatch. Default
	// 64 MiB.
	RetainBytes int64
	// Logger receives the bus's logs. Default: discard.
	Logger *slog.Logger
	// OnLagged is called with the number of messages the dispatcher fell so far behind on
	// that the log dropped them before they were dispatched. Optional.
	OnLagged func(n int64)
}

// Embedded is the in-process bus a single gateway runs on when no broker is configured.
// Publish appends to a bounded queue (a ring buffer) that gives every message its offset,
// starting at 0; Run dispatches the queue, in order, from one goroutine, and drops each
// message once dispatched. A publisher never waits for fan-out: if the dispatcher falls
// behind by more than the queue holds, the messages it missed are counted (OnLagged) and
// skipped, and a Dispatcher that is a GapDispatcher is told.
//
// The bus keeps no history of its own: the gateway's tail of the log (the frames it
// dispatched, held in memory) is the embedded bus's retained log. Replay gives only what
// is still waiting to be dispatched, and Oldest says so, so that a resume older than the
// gateway's tail resets.
type Embedded struct {
	cfg EmbeddedConfig
	d   Dispatcher
	log *slog.Logger

	// wake has room for one signal: Publish sends without blocking, Run receives.
	wake chan struct{}

	// mu protects ring, head, size, bytes and next.
	mu    sync.Mutex
	ring  []message.Message // the log; ring[head] is the oldest of size messages
	head  int
	size  int
	bytes int64
	next  int64 // the offset the next published message gets
}

// NewEmbedded returns an embedded bus that dispatches to d once Run is called.
func NewEmbedded(cfg EmbeddedConfig, d Dispatcher) *Embedded {
	if cfg.RetainMessages <= 0 {
		cfg.RetainMessages = 10000
	}
	if cfg.RetainBytes <= 0 {
		cfg.RetainBytes = 64 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Embedded{
		cfg:  cfg,
		d:    d,
		log:  cfg.Logger,
		wake: make(chan struct{}, 1),
		ring: make([]message.Message, cfg.RetainMessages),
	}
}

// Publish validates m, gives it an id and time where it has none, appends it to the log
// and returns its id. It never blocks on delivery.
func (e *Embedded) Publish(ctx context.Context, m message.Message) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("embedded bus: publish: %w", err)
	}
	m.Prepare(time.Now())
	if err := m.Validate(); err != nil {
		return "", fmt.Errorf("embedded bus: publish: %w", err)
	}
	// The caller may reuse its buffers: the log keeps its own copies.
	m.Data = bytes.Clone(m.Data)
	m.Users = slices.Clone(m.Users)

	e.mu.Lock()
	m.Offset = e.next
	e.next++
	e.append(m)
	e.mu.Unlock()

	select {
	case e.wake <- struct{}{}:
	default:
	}
	return m.ID, nil
}

// append adds m at the tail, evicting from the head to stay within both caps.
// e.mu must be held.
func (e *Embedded) append(m message.Message) {
	for e.size > 0 && (e.size == len(e.ring) || e.bytes+int64(len(m.Data)) > e.cfg.RetainBytes) {
		e.bytes -= int64(len(e.ring[e.head].Data))
		e.ring[e.head] = message.Message{}
		e.head = (e.head + 1) % len(e.ring)
		e.size--
	}
	e.ring[(e.head+e.size)%len(e.ring)] = m
	e.size++
	e.bytes += int64(len(m.Data))
}

// GapDispatcher is a Dispatcher that wants to know when the bus skipped messages: those
// through offset through will never be dispatched.
type GapDispatcher interface {
	Dispatcher
	Gap(through int64)
}

// Run dispatches every published message, in offset order, until ctx is done.
func (e *Embedded) Run(ctx context.Context) error {
	var next int64 // the next offset to dispatch
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-e.wake:
		}
		for {
			m, ok, skipped := e.at(next)
			if skipped > 0 {
				e.log.Warn("embedded bus: dispatcher fell behind the log; messages skipped", "skipped", skipped)
				if e.cfg.OnLagged != nil {
					e.cfg.OnLagged(skipped)
				}
				if g, ok := e.d.(GapDispatcher); ok {
					g.Gap(next + skipped - 1)
				}
			}
			if !ok {
				break
			}
			e.d.Dispatch(m)
			next = m.Offset + 1
			e.dispatched(m.Offset)
		}
	}
}

// at returns the message at offset off, or the oldest retained one after it when off was
// evicted (with how many were skipped). ok is false when off has not been published yet.
func (e *Embedded) at(off int64) (m message.Message, ok bool, skipped int64) {
	var one [1]message.Message
	got := e.read(off, one[:0])
	if len(got) == 0 {
		return message.Message{}, false, 0
	}
	return got[0], true, got[0].Offset - off
}

// dispatched drops the message at offset off, dispatched now, from the queue (it may
// have been dropped already by a publish that found the queue full).
func (e *Embedded) dispatched(off int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.size > 0 && e.ring[e.head].Offset == off {
		e.bytes -= int64(len(e.ring[e.head].Data))
		e.ring[e.head] = message.Message{}
		e.head = (e.head + 1) % len(e.ring)
		e.size--
	}
}

// Newest returns the offset of the newest message published, or -1 when none has been.
func (e *Embedded) Newest() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.next - 1
}

// KnownNewest is Newest: the embedded bus knows its log's newest offset exactly.
func (e *Embedded) KnownNewest() (int64, bool) { return e.Newest(), true }

// Oldest returns the offset of the oldest message the bus holds: the oldest waiting to be
// dispatched (the next offset to be given when none waits). What was dispatched is the
// gateway's to hold.
func (e *Embedded) Oldest(context.Context) (int64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.next - int64(e.size), true
}

// Connected reports that the embedded bus can take publishes: always.
func (e *Embedded) Connected() bool { return true }

// replayBatch is how many messages Replay copies out of the log at a time.
const replayBatch = 64

// Replay calls fn with each message still waiting to be dispatched after offset since, in
// offset order, until fn returns false, ctx ends, or it reaches the newest message. since
// -1 starts at the oldest held; where since+1 is no longer held (dispatched, or skipped),
// it starts at the oldest held, so the caller sees the gap. It holds the lock only to copy
// a batch.
func (e *Embedded) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
	next := since + 1
	batch := make([]message.Message, 0, replayBatch)
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("embedded bus: replay: %w", err)
		}
		batch = e.read(next, batch[:0])
		if len(batch) == 0 {
			return nil
		}
		for _, m := range batch {
			if !fn(m) {
				return nil
			}
			next = m.Offset + 1
		}
	}
}

// read appends to buf up to cap(buf) messages from offset off (or from the oldest
// retained, when off is older).
func (e *Embedded) read(off int64, buf []message.Message) []message.Message {
	e.mu.Lock()
	defer e.mu.Unlock()
	oldest := e.next - int64(e.size)
	off = max(off, oldest)
	for ; off < e.next && len(buf) < cap(buf); off++ {
		buf = append(buf, e.ring[(e.head+int(off-oldest))%len(e.ring)])
	}
	return buf
}
