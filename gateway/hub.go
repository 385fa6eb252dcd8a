package gateway

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/producer/message"
)

// member is what the hub knows of a connection: something it can queue frames to and
// close. The hub never sees the WebSocket library.
type member interface {
	// enqueue queues f for writing without blocking. A connection that cannot take f
	// (it is closing, or f would overflow its queue and it is closed with 4008) counts
	// the drop itself.
	enqueue(f *frame)
	// user is the connection's user; empty when anonymous.
	user() string
}

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
}

// Hub routes each message the bus delivers to the connections it addresses: the listed
// users' connections, else the channel's subscribers, else everyone. Dispatch is called
// by the bus from one goroutine; connections join, leave, subscribe and unsubscribe from
// their own goroutines.
type Hub struct {
	log     *slog.Logger
	metrics *Metrics

	// mu protects members, channels and users. Dispatch holds it for reading while it
	// queues a message to every recipient, so a change of membership is ordered against
	// whole messages: a connection gets all of a message's fan-out or none of it.
	mu       sync.RWMutex
	members  map[member]*membership
	channels map[string]map[member]struct{}
	users    map[string]map[member]struct{}

	// last is the offset of the newest message dispatched, message.NoOffset before
	// the first; known reports whether the bus told us where its log stands.
	last  atomic.Int64
	known atomic.Bool

	// dedup is owned by the dispatching goroutine.
	dedup *dedup
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
		cfg.DedupWindow = 2 * time.Minute
	}
	if cfg.DedupMax <= 0 {
		cfg.DedupMax = 100000
	}
	h := &Hub{
		log:      cfg.Logger,
		metrics:  cfg.Metrics,
		members:  make(map[member]*membership),
		channels: make(map[string]map[member]struct{}),
		users:    make(map[string]map[member]struct{}),
	}
	if cfg.DedupWindow > 0 {
		h.dedup = newDedup(cfg.DedupWindow, cfg.DedupMax)
	}
	h.last.Store(message.NoOffset)
	return h
}

// SetLogStart tells the hub where the bus's log stands before the first dispatch: the
// offset of its newest message (message.NoOffset when it is empty). Until this is called
// or a message with an offset is dispatched, welcome frames carry no offset.
func (h *Hub) SetLogStart(newest int64) {
	h.last.Store(newest)
	h.known.Store(true)
}

// newest returns the offset of the newest dispatched message and whether it is known.
func (h *Hub) newest() (int64, bool) {
	return h.last.Load(), h.known.Load()
}

// Dispatch queues m to every connection it addresses. It encodes the frame once and
// never blocks on a connection. Called by the bus from one goroutine.
func (h *Hub) Dispatch(m message.Message) {
	if h.dedup != nil && m.ID != "" && h.dedup.seen(m.ID, m.Time) {
		h.metrics.dropped(dropDuplicate, 1)
		h.log.Debug("duplicate message dropped", "id", m.ID, "offset", m.Offset)
		return
	}
	f := newMessageFrame(m)

	h.mu.RLock()
	switch {
	case len(m.Users) > 0:
		for i, u := range m.Users {
			if containsBefore(m.Users, i, u) {
				continue // a user listed twice still gets the message once
			}
			for c := range h.users[u] {
				c.enqueue(f)
			}
		}
	case m.Channel != "":
		for c := range h.channels[m.Channel] {
			c.enqueue(f)
		}
	default:
		for c := range h.members {
			c.enqueue(f)
		}
	}
	if m.Offset >= 0 {
		h.last.Store(m.Offset)
		h.known.Store(true)
	}
	h.mu.RUnlock()

	h.metrics.received()
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
	first(h.newest())
	ms := &membership{subs: make(map[string]struct{}, len(channels))}
	h.members[c] = ms
	if u := c.user(); u != "" {
		addTo(h.users, u, c)
	}
	for _, ch := range channels {
		if _, dup := ms.subs[ch]; !dup {
			ms.subs[ch] = struct{}{}
			addTo(h.channels, ch, c)
		}
	}
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
	}
	if u := c.user(); u != "" {
		removeFrom(h.users, u, c)
	}
	delete(h.members, c)
}

// subscribe adds ch to c's subscriptions; then, under the hub's lock so that no message
// is dispatched in between, it calls then (which queues the answer), so the answer comes
// before the channel's first message. It reports false when c is not in the hub.
func (h *Hub) subscribe(c member, ch string, then func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	ms, ok := h.members[c]
	if !ok {
		return false
	}
	if _, dup := ms.subs[ch]; !dup {
		ms.subs[ch] = struct{}{}
		addTo(h.channels, ch, c)
	}
	then()
	return true
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
		}
	}
	then()
}

// forEach calls fn for every connection in the hub, holding the hub's read lock.
func (h *Hub) forEach(fn func(member)) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for c := range h.members {
		fn(c)
	}
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

func addTo(index map[string]map[member]struct{}, key string, c member) {
	set := index[key]
	if set == nil {
		set = make(map[member]struct{})
		index[key] = set
	}
	set[c] = struct{}{}
}

func removeFrom(index map[string]map[member]struct{}, key string, c member) {
	set := index[key]
	delete(set, c)
	if len(set) == 0 {
		delete(index, key)
	}
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
