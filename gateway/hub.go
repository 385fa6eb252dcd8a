package gateway

import (
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/tail"
	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/producer/message"
)

// member is what the hub knows of a connection: something it can queue frames to and
// close. The hub never sees the WebSocket library.
type member interface {
	// Enqueue queues f for writing without blocking. A connection that cannot take f
	// (it is closing, or f would overflow its queue and it is closed with 4008) counts
	// the drop itself.
	Enqueue(f *wire.Frame)
	// User is the connection's user; empty when anonymous.
	User() string
	// SkipThrough makes the connection drop frames of messages at or below offset: the
	// ones a replay has already given it. Called by the hub before the connection joins.
	SkipThrough(offset int64)
}

// noSkip is the skip offset of a subscription that skips nothing.
const noSkip = math.MinInt64

// The defaults of HubConfig's zero fields.
const (
	DefaultDedupWindow = 2 * time.Minute
	DefaultDedupMax    = 100000
)

// HubConfig configures a Hub.
type HubConfig struct {
	// DedupWindow is how long a message id is remembered: a message whose id was seen
	// within the window before it is dropped, so a retried publish is delivered once.
	// Default 2 minutes. Negative turns deduplication off.
	DedupWindow time.Duration
	// DedupMax caps how many ids are remembered. Default 100000.
	DedupMax int
	// Logger receives the hub's logs. Default: discard.
	Logger *slog.Logger
	// Metrics receives the hub's counts. Default: counted nowhere.
	Metrics *Metrics
	// Presence, when set, learns of every connection and subscription that joins or
	// leaves (presence.go). Default nil: no presence.
	Presence *Presence
	// TailBytes and TailAge bound the tail of the log the hub keeps in memory: the frames
	// of the newest messages it dispatched, from which resumes and history are served
	// (gateway/internal/tail). Defaults 64 MiB and 10 minutes.
	TailBytes int64
	TailAge   time.Duration
	// TailMessages, when positive, bounds the tail's messages too: the embedded bus's
	// retention (--retain-messages), whose history the tail is. Default 0: no bound.
	TailMessages int
	// TraceDispatches, when positive, has the hub stamp every message's dispatch and
	// keep the stamps of this many of the newest (Dispatches, GET /debug/dispatches on
	// the admin listener): where a message's time went between its publish and its last
	// write. Default 0: nothing stamped.
	TraceDispatches int
}

// Hub routes each message the bus delivers to the connections it addresses: the listed
// users' connections, else the channel's subscribers, else everyone. Dispatch is called
// by the bus from one goroutine; connections join, leave, subscribe and unsubscribe from
// their own goroutines.
type Hub struct {
	log      *slog.Logger
	metrics  *Metrics
	presence *Presence // nil: none; its methods are called under mu

	// mu protects members, channels and users. Dispatch holds it for reading while it
	// queues a message to every recipient, so a change of membership is ordered against
	// whole messages: a connection gets all of a message's fan-out or none of it.
	mu       sync.RWMutex
	members  map[member]*membership
	channels map[string]map[member]int64 // subscriber -> offset through which it skips (replayed)
	users    map[string]map[member]struct{}

	// newest is the offset of the newest message dispatched, message.NoOffset before
	// the first; known reports whether the bus told us where its log stands
	// (SetLogStart): until then welcome frames carry no offset, and a server with a log
	// refuses connections.
	newest atomic.Int64
	known  atomic.Bool

	// dedup is owned by the dispatching goroutine.
	dedup *dedup
	// dups remembers the offsets of recent messages dropped as duplicates, so that a
	// replay drops them too. dupMu protects it.
	dupMu sync.Mutex
	dups  offsetSet

	// tail holds the frames of the newest messages dispatched. Its one appender is the
	// dispatching goroutine, under mu (Dispatch's read lock, SetLogStart's write lock), so
	// what it holds is ordered against fan-out and against joinAt's hand-over.
	tail *tail.Log[*wire.Frame]

	// traces holds the newest messages' stamps; nil unless HubConfig.TraceDispatches.
	traces *dispatchTraces
}

// membership is a connection's state in the hub; protected by Hub.mu.
type membership struct {
	subs map[string]struct{}
}

// NewHub returns an empty hub.
func NewHub(cfg HubConfig) *Hub {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DedupWindow == 0 {
		cfg.DedupWindow = DefaultDedupWindow
	}
	if cfg.DedupMax <= 0 {
		cfg.DedupMax = DefaultDedupMax
	}
	h := &Hub{
		log:      cfg.Logger,
		metrics:  cfg.Metrics,
		presence: cfg.Presence,
		members:  make(map[member]*membership),
		channels: make(map[string]map[member]int64),
		users:    make(map[string]map[member]struct{}),
		tail:     tail.New[*wire.Frame](tail.Config{MaxBytes: cfg.TailBytes, MaxAge: cfg.TailAge, MaxEntries: cfg.TailMessages}),
	}
	if cfg.DedupWindow > 0 {
		h.dedup = newDedup(cfg.DedupWindow, cfg.DedupMax)
	}
	if cfg.TraceDispatches > 0 {
		h.traces = newDispatchTraces(cfg.TraceDispatches)
	}
	h.newest.Store(message.NoOffset)
	return h
}

// SetLogStart tells the hub where the bus's log stands once the bus has caught up with
// it at start: the offset of its newest message (message.NoOffset when it is empty). The
// bus may dispatch messages before (a warm-up: the log's tail, read before any client
// may connect); those move the hub's position, but until SetLogStart welcome frames carry
// no offset and a Server with a Log refuses connections (503). It never moves the position
// back. Called by the dispatching goroutine, or before dispatching starts.
func (h *Hub) SetLogStart(newest int64) {
	// Under the lock, so that a join sees the position and known together.
	h.mu.Lock()
	defer h.mu.Unlock()
	if newest > h.newest.Load() {
		h.newest.Store(newest)
	}
	if _, ok := h.tail.Edge(); !ok {
		// Nothing dispatched yet: every message from now on comes after newest.
		h.tail.Reset(newest)
	} else if newest > h.tail.Newest() {
		// The log's newest was not dispatched (a control message): the tail is complete
		// past it, and a reader's end lines up with the hub's position.
		_ = h.tail.Append(tail.Entry[*wire.Frame]{Offset: newest, Control: true})
	}
	h.known.Store(true)
}

// appendTail adds m's frame f (nil: m is not delivered, as a duplicate) to the tail. The
// first message dispatched sets the tail's edge: the tail is complete from it on. h.mu
// must be held (for reading, by the dispatching goroutine).
func (h *Hub) appendTail(m *message.Message, f *wire.Frame) {
	if m.Offset < 0 {
		return
	}
	if _, ok := h.tail.Edge(); !ok {
		h.tail.Reset(m.Offset - 1)
	}
	e := tail.Entry[*wire.Frame]{Offset: m.Offset, Channel: m.Channel, Users: m.Users, Control: f == nil, Value: f}
	if f != nil {
		e.Size = f.Size() + frameOverhead
	}
	if err := h.tail.Append(e); err != nil {
		h.log.Debug("tail: message not held", "offset", m.Offset, "err", err)
	}
}

// frameOverhead is what the tail counts for a frame beside its bytes: the Frame itself.
const frameOverhead = 96

// Gap tells the hub that the bus skipped the messages through offset through (the
// embedded bus's dispatcher fell behind its queue): the tail restarts after it, so that
// no resume is served across the hole. Called by the dispatching goroutine.
func (h *Hub) Gap(through int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if through > h.tail.Newest() {
		h.tail.Reset(through)
	}
	if through > h.newest.Load() {
		h.newest.Store(through)
	}
}

// TrimTail evicts from the tail what is older than its age bound: Dispatch does as
// messages come; this is for when none do. Any goroutine.
func (h *Hub) TrimTail() {
	h.mu.Lock() // the tail's appender runs under the lock: exclude it
	defer h.mu.Unlock()
	if _, ok := h.tail.Edge(); ok {
		h.tail.Trim()
	}
}

// Tail returns the tail of the log the hub keeps: for resumes, history and metrics.
func (h *Hub) Tail() *tail.Log[*wire.Frame] { return h.tail }

// Newest returns the offset of the newest message dispatched, and whether it is known
// (SetLogStart has been called).
func (h *Hub) Newest() (int64, bool) {
	return h.newest.Load(), h.known.Load()
}

// LastOffset is Newest.
//
// Deprecated: use Newest, the one name of the newest offset.
func (h *Hub) LastOffset() (int64, bool) { return h.Newest() }

// Delivered once. A connection gets each message it is addressed once, in the bus's order,
// across reconnects, retries and resumes (docs/PROTOCOL.md sections 8 and 9). Four guards
// see to it, each against one way a message could come twice:
//
//  1. The consumer's position (consumer.Stream): after losing the broker, it attaches again
//     just after the last offset it dispatched, so a reconnect re-reads nothing.
//  2. The id window (Hub.dedup, DedupWindow): a publisher that retries sends the same id
//     again, which the log keeps under a new offset; Dispatch drops an id seen within the
//     window. Ids the log derived from an offset are not checked: no retry repeats them.
//  3. The duplicate offsets (Hub.dups): the offsets of the messages the id window dropped,
//     so that a replay from the bus's log, which has the retry in it, drops them too. (The
//     tail never holds them: Dispatch appends a duplicate as a control entry; and a read
//     of the log for a resume stops inside the tail, below what Dispatch has reached, so
//     Dispatch has judged every message it gives.)
//  4. The skip offset (writer.Queue.SkipThrough, and a channel's skip in Hub.channels): a
//     resume may end past what Dispatch has reached (a since from a gateway that was
//     ahead, or the embedded bus's log, ahead of its dispatch); the connection joins live
//     delivery at the replay's end, skipping the offsets through it. The hand-over itself
//     is under the hub's lock (joinAt, subscribeAt), under which the tail and live
//     delivery stand still together, so no message falls between the replay and live
//     delivery.
//
// The browser client (herald.js) also drops a message whose offset it has seen.

// Dispatch queues m to every connection it addresses. It encodes the frame once and
// never blocks on a connection. Called by the bus from one goroutine.
//
// A message the publisher gave no time has none on the wire; the hub's clocks, the
// deduplication window and the delivery latency, use the time it received it instead.
// An id the log derived from the offset (message.OffsetID) is not deduplicated: no
// publisher chose it, so no retry can repeat it.
func (h *Hub) Dispatch(m message.Message) {
	start := time.Now()
	clock := m.Time
	if clock.IsZero() {
		clock = start
	}
	if h.dedup != nil && m.ID != "" && !message.IsOffsetID(m.ID) && h.dedup.seen(m.ID, clock) {
		h.metrics.Dropped(metrics.DropDuplicate, 1)
		if m.Offset >= 0 {
			h.dupMu.Lock()
			h.dups.add(m.Offset)
			h.dupMu.Unlock()
			h.mu.RLock()
			h.appendTail(&m, nil)
			h.newest.Store(m.Offset)
			h.mu.RUnlock()
		}
		h.log.Debug("duplicate message dropped", "id", m.ID, "offset", m.Offset)
		return
	}
	f := newMessageFrame(m, start)
	if h.traces != nil {
		f.Trace = &wire.Trace{ID: m.ID, Offset: m.Offset, Published: f.Published.UnixNano(), Dispatched: start.UnixNano()}
	}

	h.mu.RLock()
	recipients := 0
	switch routeOf(&m) {
	case toUsers:
		for i, u := range m.Users {
			if containsBefore(m.Users, i, u) {
				continue // a user listed twice still gets the message once
			}
			for c := range h.users[u] {
				c.Enqueue(f)
				recipients++
			}
		}
	case toChannel:
		for c, skip := range h.channels[m.Channel] {
			if m.Offset > skip {
				c.Enqueue(f)
				recipients++
			}
		}
	case toEveryone:
		for c := range h.members {
			c.Enqueue(f)
			recipients++
		}
	}
	if f.Trace != nil {
		f.Trace.Enqueued, f.Trace.Recipients = time.Now().UnixNano(), recipients
		h.traces.add(f.Trace)
	}
	if m.Offset >= 0 {
		h.appendTail(&m, f)
		h.newest.Store(m.Offset)
	}
	h.mu.RUnlock()

	h.metrics.Received(m.Source, time.Since(start))
}

// A route is whom a message reaches (docs/PROTOCOL.md section 8): the connections of the
// users it names; else, where it names a channel, that channel's subscribers; else every
// connection. Live delivery (Dispatch) and replay (resumer) both decide by routeOf, so
// that the two cannot drift.
type route uint8

const (
	toUsers route = iota
	toChannel
	toEveryone
)

// routeOf is m's route.
func routeOf(m *message.Message) route {
	switch {
	case len(m.Users) > 0:
		return toUsers
	case m.Channel != "":
		return toChannel
	}
	return toEveryone
}

// reaches reports whether live delivery gives m to a connection of user (empty:
// anonymous) subscribed to channels: what a replay for that connection gives it.
func reaches(m *message.Message, user string, channels []string) bool {
	return reachesHeld(m.Users, m.Channel, user, channels)
}

// reachesHeld is reaches for a message of the given users and channel (a held entry of
// the tail).
func reachesHeld(users []string, channel, user string, channels []string) bool {
	switch {
	case len(users) > 0:
		return user != "" && slices.Contains(users, user)
	case channel != "":
		return slices.Contains(channels, channel)
	}
	return true
}

// routedTo reports whether m goes to the subscribers of channel ch as such: what a
// replay of ch gives a subscriber (a message to everyone, or to users, is not ch's).
func routedTo(m *message.Message, ch string) bool {
	return routeOf(m) == toChannel && m.Channel == ch
}

func containsBefore(list []string, i int, s string) bool {
	for _, v := range list[:i] {
		if v == s {
			return true
		}
	}
	return false
}

// join adds c to the hub with its first subscriptions. Under the hub's lock, before any
// message can reach c, it calls first with the newest offset dispatched so far, so the
// welcome frame queued there is c's first frame and tells exactly where live delivery
// starts.
func (h *Hub) join(c member, channels []string, first func(newest int64, known bool)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	first(h.Newest())
	h.add(c, channels)
}

// add puts c in the index with its user and channels. h.mu must be held for writing.
func (h *Hub) add(c member, channels []string) {
	ms := &membership{subs: make(map[string]struct{}, len(channels))}
	h.members[c] = ms
	if u := c.User(); u != "" {
		addTo(h.users, u, c, struct{}{})
	}
	h.presence.Connected(c)
	for _, ch := range channels {
		if _, dup := ms.subs[ch]; !dup {
			ms.subs[ch] = struct{}{}
			addTo(h.channels, ch, c, noSkip)
			h.presence.Joined(ch, c, false)
		}
	}
}

// joinAt is join for a connection that a replay has brought up to offset at: it joins
// only if no message after at has been dispatched yet (else it reports false, and the
// replay goes on), and live delivery to it then skips offsets at or below at. then is
// called under the hub's lock, after c joined, to queue the frame that ends the replay.
func (h *Hub) joinAt(c member, channels []string, at int64, then func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.newest.Load() > at {
		return false
	}
	c.SkipThrough(at)
	h.add(c, channels)
	then()
	return true
}

// leave removes c and all its subscriptions. Leaving twice is harmless.
func (h *Hub) leave(c member) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ms, ok := h.members[c]
	if !ok {
		return
	}
	for ch := range ms.subs {
		removeFrom(h.channels, ch, c)
		h.presence.Left(ch, c)
	}
	if u := c.User(); u != "" {
		removeFrom(h.users, u, c)
	}
	h.presence.Disconnected(c)
	delete(h.members, c)
}

// subscribe adds ch to c's subscriptions; then, under the hub's lock so that no message
// is dispatched in between, it calls then (which queues the answer), so the answer comes
// before the channel's first message. With watch, c also gets the channel's presence
// events (join, leave). It reports false when c is not in the hub.
func (h *Hub) subscribe(c member, ch string, watch bool, then func()) bool {
	return h.subscribeAt(c, ch, noSkip, watch, then)
}

// subscribeAt is subscribe for a channel that a replay has brought c up to offset at: it
// subscribes only if no message after at has been dispatched yet (else it reports false,
// and the replay goes on), and live delivery of ch to c then skips offsets through at.
func (h *Hub) subscribeAt(c member, ch string, at int64, watch bool, then func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	ms, ok := h.members[c]
	if !ok || (at != noSkip && h.newest.Load() > at) {
		return false
	}
	skip, subscribed := h.channels[ch][c]
	if subscribed && skip > at {
		at = skip // subscribed again: what a replay gave it is still not to come twice
	}
	ms.subs[ch] = struct{}{}
	addTo(h.channels, ch, c, at)
	then() // the answer first: the channel's presence events, if asked for, follow it
	if subscribed {
		h.presence.Watch(ch, c, watch)
	} else {
		h.presence.Joined(ch, c, watch)
	}
	return true
}

// subscribeWithHistory is subscribe that, under the same lock, gives then the frames of
// the channel's newest n messages held in the tail whose users mayTake accepts (empty
// users: a message of the channel's), oldest first, and whether they are all the channel
// had of those asked for (History's complete). Live delivery to c starts right after the
// newest of them: no gap, no duplicate.
func (h *Hub) subscribeWithHistory(c member, ch string, watch bool, n int, mayTake func(users []string) bool, then func(held []*wire.Frame, complete bool)) bool {
	return h.subscribeAt(c, ch, noSkip, watch, func() {
		entries, complete := h.tail.History(ch, -1, n, func(e *tail.Entry[*wire.Frame]) bool { return mayTake(e.Users) }, nil)
		frames := make([]*wire.Frame, len(entries))
		for i, e := range entries {
			frames[i] = e.Value
		}
		then(frames, complete)
	})
}

// unsubscribe removes ch from c's subscriptions, then calls then under the hub's lock,
// so that no message of ch follows the answer.
func (h *Hub) unsubscribe(c member, ch string, then func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ms, ok := h.members[c]; ok {
		if _, was := ms.subs[ch]; was {
			delete(ms.subs, ch)
			removeFrom(h.channels, ch, c)
			h.presence.Left(ch, c)
		}
	}
	then()
}

// Len returns the number of connections in the hub.
func (h *Hub) Len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.members)
}

// Channels returns the number of channels with at least one subscriber, and the number
// of subscriptions in all.
func (h *Hub) Channels() (channels, subscriptions int) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, set := range h.channels {
		subscriptions += len(set)
	}
	return len(h.channels), subscriptions
}

// subscriptionsOf returns the channels c is subscribed to.
func (h *Hub) subscriptionsOf(c member) []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	ms, ok := h.members[c]
	if !ok {
		return nil
	}
	out := make([]string, 0, len(ms.subs))
	for ch := range ms.subs {
		out = append(out, ch)
	}
	return out
}

// subscriptionCount returns how many channels c is subscribed to, and whether ch is
// one of them.
func (h *Hub) subscriptionCount(c member, ch string) (n int, has bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	ms, ok := h.members[c]
	if !ok {
		return 0, false
	}
	_, has = ms.subs[ch]
	return len(ms.subs), has
}

func addTo[V any](index map[string]map[member]V, key string, c member, v V) {
	set := index[key]
	if set == nil {
		set = make(map[member]V)
		index[key] = set
	}
	set[c] = v
}

func removeFrom[V any](index map[string]map[member]V, key string, c member) {
	set := index[key]
	delete(set, c)
	if len(set) == 0 {
		delete(index, key)
	}
}

// duplicate reports whether the message at offset was dropped as a duplicate.
func (h *Hub) duplicate(offset int64) bool {
	h.dupMu.Lock()
	defer h.dupMu.Unlock()
	return h.dups.has(offset)
}

// offsetSet is a bounded set of recent offsets: past its cap, the oldest are forgotten.
type offsetSet struct {
	set   map[int64]struct{}
	order []int64
}

const maxDupOffsets = 10000

func (s *offsetSet) add(off int64) {
	if s.set == nil {
		s.set = make(map[int64]struct{})
	}
	if len(s.order) >= maxDupOffsets {
		delete(s.set, s.order[0])
		s.order = s.order[1:]
	}
	s.set[off] = struct{}{}
	s.order = append(s.order, off)
}

func (s *offsetSet) has(off int64) bool {
	_, ok := s.set[off]
	return ok
}

// dedup remembers message ids for a window of publish time, in a bounded map with a
// FIFO of ids for eviction. It is not safe for concurrent use.
type dedup struct {
	window time.Duration
	max    int
	ids    map[string]time.Time
	order  []string // ids in the order first seen; order[start:] are live
	start  int
}

func newDedup(window time.Duration, max int) *dedup {
	return &dedup{window: window, max: max, ids: make(map[string]time.Time)}
}

// seen reports whether id was seen within the window before t, and remembers it.
func (d *dedup) seen(id string, t time.Time) bool {
	// Forget ids that are out of the window, or over the cap, oldest first.
	for d.start < len(d.order) {
		oldest := d.order[d.start]
		if len(d.ids) < d.max && t.Sub(d.ids[oldest]) <= d.window {
			break
		}
		delete(d.ids, oldest)
		d.order[d.start] = ""
		d.start++
	}
	if d.start > len(d.order)/2 && d.start > 1024 {
		d.order = append(d.order[:0], d.order[d.start:]...)
		d.start = 0
	}
	if first, ok := d.ids[id]; ok && t.Sub(first) <= d.window {
		return true
	}
	d.ids[id] = t
	d.order = append(d.order, id)
	return false
}
