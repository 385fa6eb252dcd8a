package tail

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Errors of the tail; callers match them with errors.Is.
var (
	// ErrNotHeld: the tail is not complete after the asked offset (it is below the edge,
	// or the edge is not known yet). Read the bus's log instead.
	ErrNotHeld = errors.New("tail: not held")
	// ErrFellBehind: the reader's next entry was evicted before it got there.
	ErrFellBehind = errors.New("tail: reader fell behind the start")
	// ErrOutOfOrder: Append was given an offset at or below the newest appended.
	ErrOutOfOrder = errors.New("tail: offset out of order")
)

// Defaults of Config's zero fields.
const (
	DefaultMaxBytes = 64 << 20
	DefaultMaxAge   = 10 * time.Minute
)

// noEdge is the edge before the first Reset: every offset is below it.
const noEdge = math.MaxInt64

// blockEntries is how many entries are allocated at once.
const blockEntries = 64

// minSlots is the ring's first size; it doubles when full.
const minSlots = 1024

// Config bounds a Log.
type Config struct {
	// MaxBytes bounds the bytes held: the entries' Size plus EntryOverhead each. The
	// oldest entries are evicted to make room. Default 64 MiB.
	MaxBytes int64
	// MaxAge bounds how long an entry is held after it was appended: Append and Trim
	// evict older ones. Default 10 minutes.
	MaxAge time.Duration
	// MaxEntries, when positive, bounds how many entries are held (the embedded bus's
	// --retain-messages). Default 0: no bound but bytes and age.
	MaxEntries int
	// Now is the clock the age is measured with. Default time.Now.
	Now func() time.Time
}

// Entry is one message held in the tail: its offset, what replay and history route and
// filter on, and the caller's value (the encoded frame).
type Entry[E any] struct {
	// Offset is the message's offset in the bus's log.
	Offset int64
	// Size is the bytes the value holds, counted against MaxBytes.
	Size int
	// Channel is the message's channel; empty for a broadcast to all.
	Channel string
	// Users, when not empty, are the only users the message is for.
	Users []string
	// Control marks a message no client is ever given (a canary, one the bus could not
	// decode, a duplicate): Append holds nothing for it, but the tail stays complete past
	// its offset. Always false in held entries.
	Control bool
	// Value is what readers are given: the frame live delivery shared.
	Value E

	seq   uint64 // place in the tail, from 0; set by Append
	prev  uint64 // seq+1 of the previous held entry of Channel when appended; 0: none
	added int64  // when appended, UnixNano of Config.Now
}

// EntryOverhead is what the tail counts for an entry beside its Size: the entry itself and
// its slot in the ring.
func EntryOverhead[E any]() int64 {
	return int64(unsafe.Sizeof(Entry[E]{})) + int64(unsafe.Sizeof(atomic.Pointer[Entry[E]]{}))
}

// ring is a power-of-two array of slots; the entry of seq s is in slots[s&mask] while it is
// held. The appender replaces the ring with a larger copy when it is full; readers that
// loaded the old one still find in it every entry it held (the appender no longer writes
// to it).
type ring[E any] struct {
	mask  uint64
	slots []atomic.Pointer[Entry[E]]
}

func newRing[E any](n int) *ring[E] {
	return &ring[E]{mask: uint64(n - 1), slots: make([]atomic.Pointer[Entry[E]], n)}
}

// Log is the tail of the log. See the package doc for who may call what.
type Log[E any] struct {
	maxBytes int64
	maxAge   int64 // nanoseconds
	maxN     uint64
	now      func() time.Time
	overhead int64

	// Written by the appender only, read by anyone.
	ring   atomic.Pointer[ring[E]]
	end    atomic.Uint64 // the seq the next held entry gets: [start, end) are held
	newest atomic.Int64  // offset of the newest entry appended (held or control); -1 before any
	bytes  atomic.Int64  // bytes held, as counted
	// start and edge change together: the appender makes version odd, writes both, makes
	// it even again (a sequence lock of atomics); bounds reads a consistent pair.
	version atomic.Uint64
	start   atomic.Uint64 // seq of the oldest held entry
	edge    atomic.Int64  // the tail is complete after this offset; noEdge: not known
	// resets counts Resets (incremented before the bounds move): a Reader made before one
	// falls behind, whatever its place.
	resets atomic.Uint64

	// block is the appender's: the entries still to hand out of the current block.
	block []Entry[E]

	// heads maps a channel to the seq+1 of its newest held entry. Only the appender adds
	// and removes keys, under headsMu; it reads the map without the lock. Readers look up
	// under headsMu.RLock and load the value atomically.
	headsMu sync.RWMutex
	heads   map[string]*atomic.Uint64
}

// New returns an empty tail whose edge is not known yet (see Reset).
func New[E any](cfg Config) *Log[E] {
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Log[E]{
		maxBytes: cfg.MaxBytes,
		maxAge:   int64(cfg.MaxAge),
		maxN:     uint64(max(cfg.MaxEntries, 0)),
		now:      cfg.Now,
		overhead: EntryOverhead[E](),
		heads:    make(map[string]*atomic.Uint64),
	}
	l.ring.Store(newRing[E](minSlots))
	l.newest.Store(-1)
	l.edge.Store(noEdge)
	return l
}

// setBounds publishes a new start and edge together. Appender only.
func (l *Log[E]) setBounds(start uint64, edge int64) {
	l.version.Add(1)
	l.start.Store(start)
	l.edge.Store(edge)
	l.version.Add(1)
}

// bounds returns the seq of the oldest held entry and the edge, as one consistent pair.
func (l *Log[E]) bounds() (start uint64, edge int64) {
	for {
		v := l.version.Load()
		if v&1 == 0 {
			start, edge = l.start.Load(), l.edge.Load()
			if l.version.Load() == v {
				return start, edge
			}
		}
		// The appender is between the two stores: a few instructions.
	}
}

// Append adds e at the newest end, evicting the oldest entries to stay within the bounds.
// A control entry is not held, but the tail stays complete past its offset; an entry
// larger than MaxBytes cannot be held, so the tail restarts after it (Reset(e.Offset)).
// It fails with ErrOutOfOrder, holding nothing, when e.Offset is not above Newest.
// Appender only.
func (l *Log[E]) Append(e Entry[E]) error {
	if newest := l.newest.Load(); e.Offset <= newest {
		return fmt.Errorf("tail: append offset %d after %d: %w", e.Offset, newest, ErrOutOfOrder)
	}
	now := l.now().UnixNano()
	l.trim(now)
	if e.Control {
		l.newest.Store(e.Offset)
		return nil
	}
	size := int64(e.Size) + l.overhead
	if size > l.maxBytes {
		l.Reset(e.Offset)
		return nil
	}
	for l.bytes.Load()+size > l.maxBytes || l.maxN > 0 && l.end.Load()-l.start.Load() >= l.maxN {
		l.evictOldest()
	}
	start, seq := l.start.Load(), l.end.Load()
	r := l.ring.Load()
	if seq-start == uint64(len(r.slots)) {
		r = l.grow(r, start, seq)
	}
	if len(l.block) == 0 {
		l.block = make([]Entry[E], blockEntries)
	}
	p := &l.block[0]
	l.block = l.block[1:]
	*p = e
	p.seq, p.added = seq, now
	var head *atomic.Uint64
	if e.Channel != "" {
		if head = l.heads[e.Channel]; head != nil {
			p.prev = head.Load()
		}
	}
	r.slots[seq&r.mask].Store(p)
	l.bytes.Add(size)
	// end before newest: a reader that loads newest, then end, and finds nothing more to
	// read has seen every held entry up to that newest (see Reader.Next).
	l.end.Store(seq + 1)
	l.newest.Store(e.Offset)
	// The head last: History follows it to a slot already stored.
	if e.Channel != "" {
		if head == nil {
			head = new(atomic.Uint64)
			l.headsMu.Lock()
			l.heads[e.Channel] = head
			l.headsMu.Unlock()
		}
		head.Store(seq + 1)
	}
	return nil
}

// grow replaces r, which is full, by a ring twice its size holding the same entries.
func (l *Log[E]) grow(r *ring[E], start, end uint64) *ring[E] {
	n := newRing[E](2 * len(r.slots))
	for s := start; s < end; s++ {
		n.slots[s&n.mask].Store(r.slots[s&r.mask].Load())
	}
	l.ring.Store(n)
	return n
}

// evictOldest evicts the oldest held entry; the edge moves to its offset. Appender only;
// there must be one.
func (l *Log[E]) evictOldest() {
	r := l.ring.Load()
	s := l.start.Load()
	p := r.slots[s&r.mask].Load()
	// The edge first: a reader that finds the slot empty then sees the edge past it.
	l.setBounds(s+1, p.Offset)
	r.slots[s&r.mask].Store(nil)
	l.bytes.Add(-(int64(p.Size) + l.overhead))
	if p.Channel != "" {
		if head := l.heads[p.Channel]; head != nil && head.Load() == s+1 {
			l.headsMu.Lock()
			delete(l.heads, p.Channel) // its newest held entry is gone: the channel has none
			l.headsMu.Unlock()
		}
	}
}

// trim evicts the entries appended before now minus MaxAge.
func (l *Log[E]) trim(now int64) {
	r := l.ring.Load()
	for s := l.start.Load(); s < l.end.Load(); s++ {
		if now-r.slots[s&r.mask].Load().added <= l.maxAge {
			return
		}
		l.evictOldest()
	}
}

// Trim evicts the entries older than MaxAge. Append does it too; call Trim where no
// message may come for a while, so that the tail does not keep old ones. Appender only.
func (l *Log[E]) Trim() {
	l.trim(l.now().UnixNano())
}

// Reset empties the tail and makes it complete after edge: every message dispatched from
// now on has an offset above edge (Newest becomes edge). Call it at start, once the
// consumer's first offset is known (edge is the offset before it), and whenever what is
// dispatched has a gap. Readers that were reading fall behind. Appender only.
func (l *Log[E]) Reset(edge int64) {
	l.resets.Add(1)
	r := l.ring.Load()
	start, end := l.start.Load(), l.end.Load()
	// end moves one past what was held, with nothing at that seq: a reader at the end
	// (whose next seq was end) finds an empty slot and falls behind, rather than reading
	// on across the gap.
	l.setBounds(end+1, edge)
	for s := start; s < end; s++ {
		r.slots[s&r.mask].Store(nil)
	}
	l.end.Store(end + 1)
	l.newest.Store(edge)
	l.bytes.Store(0)
	l.headsMu.Lock()
	clear(l.heads)
	l.headsMu.Unlock()
	l.block = nil
}

// Edge returns the offset after which the tail is complete, and false while it is not
// known (before the first Reset).
func (l *Log[E]) Edge() (int64, bool) {
	_, edge := l.bounds()
	return edge, edge != noEdge
}

// Newest returns the offset of the newest message appended, held or control; -1 before
// any (or the edge given to the last Reset).
func (l *Log[E]) Newest() int64 { return l.newest.Load() }

// Inside returns an offset at or past the edge with a margin against eviction: the offset
// of the entry n entries after the oldest held one (the newest one where fewer are held,
// the edge where none is). A caller that must reach the tail from elsewhere (a stream read)
// aims there, so that the entries evicted while it hands over do not pass it. The second
// result is false while the edge is not known.
func (l *Log[E]) Inside(n int) (int64, bool) {
	for {
		start, edge := l.bounds()
		if edge == noEdge {
			return edge, false
		}
		end := l.end.Load()
		if start >= end {
			return max(edge, l.newest.Load()), true
		}
		s := start + uint64(max(n, 0))
		if s >= end {
			s = end - 1
		}
		r := l.ring.Load()
		if p := r.slots[s&r.mask].Load(); p != nil && p.seq == s {
			return p.Offset, true
		}
		// Evicted while we looked: look again from the new start.
	}
}

// Stats is the tail's state at one moment.
type Stats struct {
	Entries int   // entries held
	Bytes   int64 // bytes held, as counted against MaxBytes
	// Oldest is when the oldest held entry was appended; zero when none is held.
	Oldest time.Time
	Edge   int64 // the tail is complete after this offset (math.MaxInt64: not known)
	Newest int64 // offset of the newest message appended
}

// Stats returns the tail's state, for metrics. Any goroutine.
func (l *Log[E]) Stats() Stats {
	for {
		start, edge := l.bounds()
		end := l.end.Load()
		st := Stats{Bytes: l.bytes.Load(), Edge: edge, Newest: l.newest.Load()}
		if start >= end {
			return st
		}
		st.Entries = int(end - start)
		r := l.ring.Load()
		if p := r.slots[start&r.mask].Load(); p != nil && p.seq == start {
			st.Oldest = time.Unix(0, p.added)
			return st
		}
	}
}

// Read returns a Reader of the held entries with offsets above since, in offset order. It
// fails with ErrNotHeld when the tail is not complete after since (since is below the
// edge, or the edge is not known). since may be above Newest (a client that saw more on
// another gateway): the Reader then waits for entries above since. Any goroutine.
func (l *Log[E]) Read(since int64) (Reader[E], error) {
	resets := l.resets.Load()
	start, edge := l.bounds()
	if since < edge {
		return Reader[E]{}, ErrNotHeld
	}
	end := l.end.Load()
	r := l.ring.Load() // loaded after end: it holds every seq below end not evicted
	// The first seq whose entry is above since. Evicted entries are a prefix and have
	// offsets at or below the edge, so they count as at or below since...
	lo, hi := start, end
	for lo < hi {
		mid := lo + (hi-lo)/2
		if p := r.slots[mid&r.mask].Load(); p == nil || p.seq != mid || p.Offset <= since {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	// ...as long as the edge is still at or below since: else entries above since may have
	// been evicted while we searched.
	if _, edge := l.bounds(); since < edge {
		return Reader[E]{}, ErrNotHeld
	}
	return Reader[E]{l: l, seq: lo, since: since, through: since, resets: resets}, nil
}

// History appends to dst the newest n held entries of channel with offsets above after
// that keep accepts (keep nil: every one), oldest first, and reports whether they are all
// there are: n of them were found, or the tail is complete after after (so none that it
// does not hold can be missing). It follows the channel's entries only, not the whole
// tail. Any goroutine.
func (l *Log[E]) History(channel string, after int64, n int, keep func(*Entry[E]) bool, dst []*Entry[E]) ([]*Entry[E], bool) {
	first := len(dst)
	if n <= 0 {
		return dst, true
	}
	l.headsMu.RLock()
	head := l.heads[channel]
	l.headsMu.RUnlock()
	var h uint64
	if head != nil {
		h = head.Load()
	}
	r := l.ring.Load() // loaded after the head: it holds the head's slot unless evicted
	complete := false
	for h != 0 {
		s := h - 1
		p := r.slots[s&r.mask].Load()
		if p == nil || p.seq != s {
			break // evicted: what is older is gone too
		}
		if p.Offset <= after {
			complete = true
			break
		}
		if keep == nil || keep(p) {
			dst = append(dst, p)
			if len(dst)-first == n {
				complete = true
				break
			}
		}
		h = p.prev
	}
	if !complete {
		// The channel's chain ended or was cut by eviction: complete only if the tail holds
		// everything after after. Read after the walk, the edge covers any eviction seen.
		_, edge := l.bounds()
		complete = edge <= after
	}
	got := dst[first:]
	for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
		got[i], got[j] = got[j], got[i]
	}
	return dst, complete
}
