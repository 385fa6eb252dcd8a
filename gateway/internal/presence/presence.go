// Package presence knows who is online on the channels that have presence, across every
// gateway of a cluster: this gateway's own connections exactly, told by the hub, and the
// other gateways' from the updates they send each other. It also sends the join and
// leave events that connections ask for. It imports nothing of the gateway: connections
// are Members to it, something with a user that frames can be queued to.
package presence

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/pattern"
	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/producer/message"
)

// Sender carries this gateway's presence updates to every gateway of the cluster (itself
// included: it ignores its own). The consumer package's PresenceLink is one, on RabbitMQ;
// the gateway, which does not import it, receives its updates through
// Presence.HandlePresence.
type Sender interface {
	Send(ctx context.Context, body []byte) error
}

// Member is a connection as presence sees it: its user, and a queue of frames (its join
// and leave events) that never blocks.
type Member interface {
	User() string
	Enqueue(f *wire.Frame)
}

// Config configures presence. Each zero field has the default its comment gives.
type Config struct {
	// Node names this gateway in its updates (its Config.NodeID). Default "herald".
	Node string
	// Channels are the channels with presence: names, or prefixes ending in "*" ("*"
	// alone is every channel). Default none: presence is off on every channel, and costs
	// nothing there.
	Channels []string
	// Exclude are channels without presence even where Channels names them, as patterns
	// of the same form.
	Exclude []string
	// NoUsers turns off the per-user view (which users are online at all, on how many
	// connections: GET /api/users/{id}), which otherwise counts every connection that
	// has a user, whatever its channels.
	NoUsers bool
	// Interval is how often changes are sent to the other gateways, and how long join
	// and leave events are coalesced: a user who leaves and comes back within it is
	// reported neither way. Default 1s.
	Interval time.Duration
	// SnapshotInterval is how often the gateway sends its whole state. Default 5s.
	SnapshotInterval time.Duration
	// TTL is how long a gateway's state counts after its last update: one that stops
	// (killed, cut off) leaves the view within it. Default 3 x SnapshotInterval.
	TTL time.Duration
	// MaxList caps the users listed in one presence answer. Default 1000.
	MaxList int
	// DefaultList is how many users an answer lists when the request names no limit.
	// Default 100.
	DefaultList int
	// MaxEventUsers caps the users listed in one join or leave event; beyond it the
	// event says "more", and the client asks for the list. Default 100.
	MaxEventUsers int
	// Logger receives presence's logs. Default: discard.
	Logger *slog.Logger
	// Metrics counts presence's updates, events and expiries. Default: counted nowhere.
	Metrics *metrics.Metrics
}

// The defaults of Config's zero fields (TTL is three snapshot intervals).
const (
	DefaultInterval         = time.Second
	DefaultSnapshotInterval = 5 * time.Second
	DefaultMaxList          = 1000
	DefaultList             = 100
	DefaultMaxEventUsers    = 100
)

func (c *Config) setDefaults() {
	if c.Node == "" {
		c.Node = "herald"
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.SnapshotInterval <= 0 {
		c.SnapshotInterval = DefaultSnapshotInterval
	}
	if c.TTL <= 0 {
		c.TTL = 3 * c.SnapshotInterval
	}
	if c.MaxList <= 0 {
		c.MaxList = DefaultMaxList
	}
	if c.DefaultList <= 0 {
		c.DefaultList = min(DefaultList, c.MaxList)
	}
	if c.MaxEventUsers <= 0 {
		c.MaxEventUsers = DefaultMaxEventUsers
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Presence knows who is online on the channels that have presence, across every gateway:
// this gateway's own connections exactly (the hub tells it of each join and leave, under
// the hub's lock), and the other gateways' from their updates. Each gateway sends, every
// Interval, the changes to its state (deltas that carry the new counts of what changed),
// every SnapshotInterval its whole state, a sync request when it starts or reconnects (the
// others answer with snapshots, so that it rebuilds its view at once), and a bye when it
// drains. A gateway whose updates stop leaves the view after TTL. Without a sender (the
// embedded bus), presence is this gateway's alone, and exact.
//
// It also sends join and leave events to the connections that asked for them: changes
// to whether a user is on a channel at all (on any gateway, by any connection), coalesced
// over one Interval.
//
// A nil *Presence is presence off: every method does nothing.
type Presence struct {
	cfg      Config
	on, off  pattern.Set // Channels and Exclude
	log      *slog.Logger
	metrics  *metrics.Metrics
	inst     string // this process's instance of Node
	kick     chan struct{}
	clock    func() time.Time // time.Now, but in tests
	snapSize int64            // bytes of the last snapshot sent; under mu

	// mu protects everything below. The hub calls joined, left, watch, connected and
	// disconnected holding its own lock; presence never calls the hub. Events are queued
	// to connections under mu (a connection's lock is taken after it, never before).
	mu       sync.Mutex
	self     *nodeView
	nodes    map[string]*nodeView // the other gateways', by instance
	chans    map[string]*channelView
	users    map[string]int // user -> connections, over every gateway
	dirty    nodeView       // what changed in self since the last update (counts are self's now)
	changes  map[string]map[string]bool
	watchers map[string]map[Member]struct{}
	seq      uint64 // of the last update sent
	snapDue  bool   // send a snapshot at the next flush (asked for, or an update was lost)
	syncDue  bool   // ask the others for snapshots at the next flush
	lastSnap time.Time
}

// nodeView is one gateway's presence: connections per user per channel, anonymous
// connections per channel, and connections per user.
type nodeView struct {
	node    string
	seq     uint64
	expires time.Time
	chans   map[string]map[string]int
	anon    map[string]int
	users   map[string]int
}

// channelView is a channel's presence over every gateway.
type channelView struct {
	users map[string]int // user -> connections
	conns int            // connections in all, users' and anonymous
	anon  int
	// sorted is the users' ids in order, made by the first answer that needs it and
	// dropped when a user comes or goes: pages are then a search and a slice.
	sorted []string
}

func newNodeView(node string) *nodeView {
	return &nodeView{node: node, chans: map[string]map[string]int{}, anon: map[string]int{}, users: map[string]int{}}
}

// New returns presence with the given configuration; it sends nothing until Run.
func New(cfg Config) *Presence {
	cfg.setDefaults()
	var b [8]byte
	_, _ = rand.Read(b[:])
	p := &Presence{
		cfg:      cfg,
		on:       pattern.Compile(cfg.Channels, ""),
		off:      pattern.Compile(cfg.Exclude, ""),
		log:      cfg.Logger,
		metrics:  cfg.Metrics,
		inst:     hex.EncodeToString(b[:]),
		kick:     make(chan struct{}, 1),
		clock:    time.Now,
		nodes:    map[string]*nodeView{},
		chans:    map[string]*channelView{},
		users:    map[string]int{},
		changes:  map[string]map[string]bool{},
		watchers: map[string]map[Member]struct{}{},
		snapDue:  true,
		syncDue:  true,
	}
	p.self = newNodeView(cfg.Node)
	p.dirty = *newNodeView(cfg.Node)
	return p
}

// Enabled reports whether channel ch has presence.
func (p *Presence) Enabled(ch string) bool {
	return p != nil && p.on.Allows(ch) && !p.off.Allows(ch)
}

// --- this gateway's connections (called by the hub, under its lock) -----------------

// Joined counts c on ch; with watch, c gets ch's join and leave events.
func (p *Presence) Joined(ch string, c Member, watch bool) {
	if !p.Enabled(ch) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setWatch(ch, c, watch) // first: a watcher hears of its own join too, as everyone does
	p.addSelf(ch, c.User(), 1)
}

// Left uncounts c on ch, and stops its events of ch.
func (p *Presence) Left(ch string, c Member) {
	if !p.Enabled(ch) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.addSelf(ch, c.User(), -1)
	p.setWatch(ch, c, false)
}

// Watch starts or stops c's events of ch, a channel it is subscribed to already.
func (p *Presence) Watch(ch string, c Member, watch bool) {
	if !p.Enabled(ch) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setWatch(ch, c, watch)
}

// Connected counts c's user in the per-user view.
func (p *Presence) Connected(c Member) { p.countUser(c.User(), 1) }

// Disconnected uncounts c's user in the per-user view.
func (p *Presence) Disconnected(c Member) { p.countUser(c.User(), -1) }

// TracksUsers reports whether the per-user view is on (Config.NoUsers is not set).
func (p *Presence) TracksUsers() bool { return p != nil && !p.cfg.NoUsers }

func (p *Presence) countUser(user string, d int) {
	if p == nil || p.cfg.NoUsers || user == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.self.users[user] + d
	p.setUser(p.self, user, n)
	p.dirty.users[user] = n
}

// addSelf adds d connections of user (anonymous when "") to this gateway's count on ch.
// p.mu must be held.
func (p *Presence) addSelf(ch, user string, d int) {
	if user == "" {
		n := p.self.anon[ch] + d
		p.setAnon(p.self, ch, n)
		p.dirty.anon[ch] = n
		return
	}
	n := p.self.chans[ch][user] + d
	p.setChan(p.self, ch, user, n)
	set := p.dirty.chans[ch]
	if set == nil {
		set = map[string]int{}
		p.dirty.chans[ch] = set
	}
	set[user] = n
}

// setWatch adds or removes c as a watcher of ch. p.mu must be held.
func (p *Presence) setWatch(ch string, c Member, watch bool) {
	if watch {
		set := p.watchers[ch]
		if set == nil {
			set = make(map[Member]struct{})
			p.watchers[ch] = set
		}
		set[c] = struct{}{}
		return
	}
	if _, ok := p.watchers[ch][c]; ok {
		delete(p.watchers[ch], c)
		if len(p.watchers[ch]) == 0 {
			delete(p.watchers, ch)
			delete(p.changes, ch) // nobody here wants its events now
		}
	}
}

// --- the merged view -----------------------------------------------------------------

// setChan sets n as nv's connections of user on ch, and keeps the merged view, and the
// events of watched channels, in step. p.mu must be held.
func (p *Presence) setChan(nv *nodeView, ch, user string, n int) {
	n = max(n, 0)
	set := nv.chans[ch]
	old := set[user]
	if n == old {
		return
	}
	if n == 0 {
		delete(set, user)
		if len(set) == 0 {
			delete(nv.chans, ch)
		}
	} else {
		if set == nil {
			set = map[string]int{}
			nv.chans[ch] = set
		}
		set[user] = n
	}
	cv := p.viewOf(ch)
	before := cv.users[user]
	after := before + n - old
	if after <= 0 {
		delete(cv.users, user)
	} else {
		cv.users[user] = after
	}
	cv.conns += n - old
	p.dropIfEmpty(ch, cv)
	if (before > 0) == (after > 0) {
		return // the user was and is on the channel, or neither
	}
	cv.sorted = nil
	if len(p.watchers[ch]) > 0 {
		changed := p.changes[ch]
		if changed == nil {
			changed = map[string]bool{}
			p.changes[ch] = changed
		}
		if _, seen := changed[user]; !seen {
			changed[user] = before > 0 // what it was when the window began
		}
	}
}

// setAnon sets n as nv's anonymous connections on ch. p.mu must be held.
func (p *Presence) setAnon(nv *nodeView, ch string, n int) {
	n = max(n, 0)
	old := nv.anon[ch]
	if n == old {
		return
	}
	if n == 0 {
		delete(nv.anon, ch)
	} else {
		nv.anon[ch] = n
	}
	cv := p.viewOf(ch)
	cv.anon += n - old
	cv.conns += n - old
	p.dropIfEmpty(ch, cv)
}

// setUser sets n as nv's connections of user. p.mu must be held.
func (p *Presence) setUser(nv *nodeView, user string, n int) {
	n = max(n, 0)
	old := nv.users[user]
	if n == old {
		return
	}
	if n == 0 {
		delete(nv.users, user)
	} else {
		nv.users[user] = n
	}
	if total := p.users[user] + n - old; total > 0 {
		p.users[user] = total
	} else {
		delete(p.users, user)
	}
}

func (p *Presence) viewOf(ch string) *channelView {
	cv := p.chans[ch]
	if cv == nil {
		cv = &channelView{users: map[string]int{}}
		p.chans[ch] = cv
	}
	return cv
}

func (p *Presence) dropIfEmpty(ch string, cv *channelView) {
	if cv.conns <= 0 && len(cv.users) == 0 {
		delete(p.chans, ch)
	}
}

// replace makes nv's state the one given (a snapshot), or empties it (nil maps).
// p.mu must be held.
func (p *Presence) replace(nv *nodeView, chans map[string]map[string]int, anon, users map[string]int) {
	for ch, set := range nv.chans {
		for user := range set {
			if _, keep := chans[ch][user]; !keep {
				p.setChan(nv, ch, user, 0)
			}
		}
	}
	for ch, set := range chans {
		for user, n := range set {
			p.setChan(nv, ch, user, n)
		}
	}
	for ch := range nv.anon {
		if _, keep := anon[ch]; !keep {
			p.setAnon(nv, ch, 0)
		}
	}
	for ch, n := range anon {
		p.setAnon(nv, ch, n)
	}
	for user := range nv.users {
		if _, keep := users[user]; !keep {
			p.setUser(nv, user, 0)
		}
	}
	for user, n := range users {
		p.setUser(nv, user, n)
	}
}

// --- answers -------------------------------------------------------------------------

// PresenceUser is one user in a presence answer.
type PresenceUser struct {
	User        string `json:"user"`
	Connections int    `json:"connections"`
}

// ChannelPresence is who is online on a channel, over every gateway: a page of its users,
// in order of user id, after the one asked for.
type ChannelPresence struct {
	Channel string         `json:"channel"`
	Users   []PresenceUser `json:"users"`
	// Total is how many users are on the channel; Connections, how many connections
	// are subscribed to it (users' and anonymous); Anonymous, those without a user.
	Total       int `json:"total"`
	Connections int `json:"connections"`
	Anonymous   int `json:"anonymous"`
	// Next, when more users follow, is the After that asks for the next page.
	Next string `json:"next,omitempty"`
}

// Channel returns a page of at most limit users of ch after the user id after ("" from
// the first), and its counts; limit is capped at MaxList (0: DefaultList).
func (p *Presence) Channel(ch, after string, limit int) ChannelPresence {
	if limit <= 0 {
		limit = p.cfg.DefaultList
	}
	limit = min(limit, p.cfg.MaxList)
	p.mu.Lock()
	defer p.mu.Unlock()
	out := ChannelPresence{Channel: ch, Users: []PresenceUser{}}
	cv := p.chans[ch]
	if cv == nil {
		return out
	}
	out.Total, out.Connections, out.Anonymous = len(cv.users), max(cv.conns, 0), max(cv.anon, 0)
	if cv.sorted == nil {
		cv.sorted = slices.Sorted(maps.Keys(cv.users))
	}
	first, found := slices.BinarySearch(cv.sorted, after)
	if found {
		first++ // after itself is on the previous page
	}
	ids := cv.sorted[first:]
	if len(ids) > limit {
		ids = ids[:limit]
		out.Next = ids[limit-1]
	}
	for _, u := range ids {
		out.Users = append(out.Users, PresenceUser{User: u, Connections: cv.users[u]})
	}
	return out
}

// UserPresence is whether a user is online, over every gateway.
type UserPresence struct {
	User        string `json:"user"`
	Online      bool   `json:"online"`
	Connections int    `json:"connections"`
	// Gateways is how many gateways the user is connected to.
	Gateways int `json:"gateways"`
}

// User returns whether user is online, on how many connections and gateways.
func (p *Presence) User(user string) UserPresence {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := UserPresence{User: user, Connections: p.users[user]}
	out.Online = out.Connections > 0
	if p.self.users[user] > 0 {
		out.Gateways++
	}
	for _, nv := range p.nodes {
		if nv.users[user] > 0 {
			out.Gateways++
		}
	}
	return out
}

// --- updates between gateways --------------------------------------------------------

// Types of presence updates.
const (
	updateDelta    = "delta"
	updateSnapshot = "snapshot"
	updateSync     = "sync"
	updateBye      = "bye"
)

// UpdateTypes are the types of presence updates (the type label of
// herald_presence_updates_total).
func UpdateTypes() []string { return []string{updateDelta, updateSnapshot, updateSync, updateBye} }

// presenceUpdate is the body of one update between gateways (JSON). A delta carries the
// new counts of what changed (0: gone); a snapshot, the sender's whole state.
type presenceUpdate struct {
	V     int                       `json:"v"`
	Type  string                    `json:"type"`
	Node  string                    `json:"node"`
	Inst  string                    `json:"inst"`
	Seq   uint64                    `json:"seq,omitempty"`
	TTLms int64                     `json:"ttl_ms,omitempty"`
	Chans map[string]map[string]int `json:"chans,omitempty"` // channel -> user -> connections
	Anon  map[string]int            `json:"anon,omitempty"`  // channel -> anonymous connections
	Users map[string]int            `json:"users,omitempty"` // user -> connections
}

// presenceVersion is the version of presenceUpdate this gateway speaks.
const presenceVersion = 1

// maxPresenceCount bounds a count in an update from another gateway.
const maxPresenceCount = 1 << 24

var errBadUpdate = errors.New("presence: update")

// check validates an update from another gateway: it is of a known type, names its
// sender, and holds valid channel names, non-empty user ids and counts within bounds.
func (u *presenceUpdate) check() error {
	if u.V != presenceVersion {
		return fmt.Errorf("%w: version %d, want %d", errBadUpdate, u.V, presenceVersion)
	}
	switch u.Type {
	case updateDelta, updateSnapshot, updateSync, updateBye:
	default:
		return fmt.Errorf("%w: unknown type %q", errBadUpdate, u.Type)
	}
	if u.Inst == "" || len(u.Inst) > 64 || len(u.Node) > 256 {
		return fmt.Errorf("%w: bad sender", errBadUpdate)
	}
	count := func(n int) bool { return n >= 0 && n <= maxPresenceCount }
	user := func(id string) bool { return id != "" && len(id) <= message.MaxUserLen }
	for ch, set := range u.Chans {
		if !message.ValidChannel(ch) {
			return fmt.Errorf("%w: bad channel %q", errBadUpdate, ch)
		}
		for id, n := range set {
			if !user(id) || !count(n) {
				return fmt.Errorf("%w: bad entry on %q", errBadUpdate, ch)
			}
		}
	}
	for ch, n := range u.Anon {
		if !message.ValidChannel(ch) || !count(n) {
			return fmt.Errorf("%w: bad anonymous count", errBadUpdate)
		}
	}
	for id, n := range u.Users {
		if !user(id) || !count(n) {
			return fmt.Errorf("%w: bad user entry", errBadUpdate)
		}
	}
	return nil
}

// HandlePresence takes one update from a gateway of the cluster (its own are ignored):
// a snapshot replaces that gateway's state, a delta changes it, a sync asks for this
// gateway's snapshot, a bye removes that gateway. A delta after a lost update is applied
// (it carries whole counts) and this gateway asks for snapshots to repair the rest.
// Called by the link, from one goroutine.
func (p *Presence) HandlePresence(body []byte) {
	var u presenceUpdate
	err := json.Unmarshal(body, &u)
	if err == nil {
		err = u.check()
	}
	if err != nil {
		p.metrics.PresenceUpdate("invalid", "received")
		p.log.Warn("presence: update dropped", "err", err, "bytes", len(body))
		return
	}
	if u.Inst == p.inst {
		return
	}
	p.metrics.PresenceUpdate(u.Type, "received")
	p.mu.Lock()
	defer p.mu.Unlock()
	nv := p.nodes[u.Inst]
	switch u.Type {
	case updateSync:
		p.snapDue = true
		p.kickSoon()
		return
	case updateBye:
		if nv != nil {
			p.dropNode(u.Inst, nv, "said bye")
		}
		return
	}
	if nv == nil {
		nv = newNodeView(u.Node)
		// A gateway of the same name in a new process: the old one is gone.
		for inst, old := range p.nodes {
			if old.node == u.Node {
				p.dropNode(inst, old, "restarted")
			}
		}
		p.nodes[u.Inst] = nv
		p.log.Info("presence: gateway joined the view", "node", u.Node)
		if u.Type == updateDelta {
			p.syncDue = true // its earlier state is unknown here
			p.kickSoon()
		}
	}
	ttl := time.Duration(u.TTLms) * time.Millisecond
	if ttl <= 0 {
		ttl = p.cfg.TTL
	}
	nv.expires = p.clock().Add(ttl)
	switch u.Type {
	case updateSnapshot:
		p.replace(nv, u.Chans, u.Anon, u.Users)
	case updateDelta:
		if u.Seq != nv.seq+1 && nv.seq != 0 {
			p.syncDue = true // an update was lost
			p.kickSoon()
		}
		for ch, set := range u.Chans {
			for user, n := range set {
				p.setChan(nv, ch, user, n)
			}
		}
		for ch, n := range u.Anon {
			p.setAnon(nv, ch, n)
		}
		for user, n := range u.Users {
			p.setUser(nv, user, n)
		}
	}
	nv.seq = u.Seq
}

// PresenceConnected is told by the link each time it (re)connects: updates may have been
// lost both ways, so this gateway sends its snapshot and asks for the others'.
func (p *Presence) PresenceConnected() {
	p.mu.Lock()
	p.snapDue, p.syncDue = true, true
	p.mu.Unlock()
	p.kickSoon()
}

// kickSoon makes Run flush without waiting for the next tick.
func (p *Presence) kickSoon() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// dropNode removes a gateway from the view. p.mu must be held.
func (p *Presence) dropNode(inst string, nv *nodeView, why string) {
	p.replace(nv, nil, nil, nil)
	delete(p.nodes, inst)
	p.log.Info("presence: gateway left the view", "node", nv.node, "why", why)
}

// minSnapshotGap bounds how often snapshots go out when other gateways ask for them.
const minSnapshotGap = 100 * time.Millisecond

// Run sends this gateway's updates with link (nil: presence is local, and only events
// are sent), expires gateways that went silent, and sends the coalesced join and leave
// events, every Interval, until ctx ends.
func (p *Presence) Run(ctx context.Context, link Sender) {
	if p == nil {
		return
	}
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.kick:
		}
		p.flush(ctx, link, p.clock())
	}
}

// flush does one round of Run's work.
func (p *Presence) flush(ctx context.Context, link Sender, now time.Time) {
	p.mu.Lock()
	for inst, nv := range p.nodes {
		if now.After(nv.expires) {
			p.dropNode(inst, nv, "no update within the TTL")
			p.metrics.PresenceExpired()
		}
	}
	var updates []presenceUpdate
	if link != nil {
		if p.syncDue {
			updates = append(updates, p.update(updateSync))
			p.syncDue = false
		}
		if p.snapDue || now.Sub(p.lastSnap) >= p.cfg.SnapshotInterval {
			if now.Sub(p.lastSnap) >= minSnapshotGap {
				u := p.update(updateSnapshot)
				u.Chans, u.Anon, u.Users = copyChans(p.self.chans), maps.Clone(p.self.anon), maps.Clone(p.self.users)
				updates = append(updates, u)
				p.snapDue, p.lastSnap = false, now
				p.dirty = *newNodeView(p.cfg.Node) // the snapshot says it all
			}
		}
		if len(p.dirty.chans)+len(p.dirty.anon)+len(p.dirty.users) > 0 {
			u := p.update(updateDelta)
			u.Chans, u.Anon, u.Users = p.dirty.chans, p.dirty.anon, p.dirty.users
			updates = append(updates, u)
			p.dirty = *newNodeView(p.cfg.Node)
		}
	} else {
		p.dirty = *newNodeView(p.cfg.Node)
	}
	p.sendEvents()
	p.mu.Unlock()

	for _, u := range updates {
		p.send(ctx, link, u)
	}
}

// update starts an update of type typ from this gateway; a delta or snapshot takes the
// next sequence number. p.mu must be held.
func (p *Presence) update(typ string) presenceUpdate {
	u := presenceUpdate{V: presenceVersion, Type: typ, Node: p.cfg.Node, Inst: p.inst}
	if typ == updateDelta || typ == updateSnapshot {
		p.seq++
		u.Seq = p.seq
		u.TTLms = p.cfg.TTL.Milliseconds()
	}
	return u
}

// send sends u; a delta or snapshot that is not sent makes the next flush send a
// snapshot, which carries everything.
func (p *Presence) send(ctx context.Context, link Sender, u presenceUpdate) {
	body, err := json.Marshal(u)
	if err != nil {
		panic(fmt.Sprintf("presence: encode update: %v", err)) // maps of strings and ints
	}
	sctx, cancel := context.WithTimeout(ctx, p.cfg.Interval+time.Second)
	err = link.Send(sctx, body)
	cancel()
	if err != nil {
		p.metrics.PresenceUpdate(u.Type, "failed")
		p.log.Warn("presence: update not sent", "type", u.Type, "err", err)
		p.mu.Lock()
		p.snapDue = p.snapDue || u.Type != updateBye
		p.syncDue = p.syncDue || u.Type == updateSync
		p.mu.Unlock()
		return
	}
	p.metrics.PresenceUpdate(u.Type, "sent")
	if u.Type == updateSnapshot {
		p.mu.Lock()
		p.snapSize = int64(len(body))
		p.mu.Unlock()
	}
}

// Leave tells the other gateways that this one is leaving, so that its connections leave
// their views at once, not after the TTL. Called once, when the gateway drains.
func (p *Presence) Leave(ctx context.Context, link Sender) {
	if p == nil || link == nil {
		return
	}
	p.mu.Lock()
	u := p.update(updateBye)
	p.mu.Unlock()
	p.send(ctx, link, u)
}

func copyChans(m map[string]map[string]int) map[string]map[string]int {
	out := make(map[string]map[string]int, len(m))
	for ch, set := range m {
		out[ch] = maps.Clone(set)
	}
	return out
}

// --- events ----------------------------------------------------------------------------

// presenceEventFrame is a join or leave event.
type presenceEventFrame struct {
	Op      string   `json:"op"`
	Channel string   `json:"channel"`
	Users   []string `json:"users"`
	More    bool     `json:"more,omitempty"`
}

// sendEvents turns the window's changes into join and leave frames, one of each at most
// per watched channel, for users whose presence differs from when the window began, and
// queues them to the channel's watchers. p.mu must be held: the hub's subscribe and
// unsubscribe take it to change the watchers before they queue their answers, so no
// event follows an unsubscribed, or comes before the subscribed that asked for it.
// (Enqueue never blocks.)
func (p *Presence) sendEvents() {
	for ch, changed := range p.changes {
		to := p.watchers[ch]
		if len(to) == 0 {
			continue
		}
		var joins, leaves []string
		for user, was := range changed {
			now := p.chans[ch] != nil && p.chans[ch].users[user] > 0
			switch {
			case now && !was:
				joins = append(joins, user)
			case !now && was:
				leaves = append(leaves, user)
			}
		}
		for _, ev := range []struct {
			op    string
			users []string
		}{{"join", joins}, {"leave", leaves}} {
			if len(ev.users) == 0 {
				continue
			}
			p.metrics.PresenceEvents(ev.op, len(ev.users))
			slices.Sort(ev.users)
			f := presenceEventFrame{Op: ev.op, Channel: ch, Users: ev.users}
			if len(f.Users) > p.cfg.MaxEventUsers {
				f.Users, f.More = f.Users[:p.cfg.MaxEventUsers], true
			}
			frame := wire.Reply(f)
			for c := range to {
				c.Enqueue(frame)
			}
		}
	}
	clear(p.changes)
}

// --- metrics -------------------------------------------------------------------------

// collector reads presence's gauges from its state at scrape time.
type collector struct {
	p                       *Presence
	entries, gateways, snap *prometheus.Desc
}

// Collector returns the collector of presence's gauges (entries, gateways, the last
// snapshot's size), read from its state at scrape time.
func (p *Presence) Collector() prometheus.Collector {
	return &collector{
		p: p,
		entries: prometheus.NewDesc("herald_presence_entries",
			"Entries in the merged presence view, by kind: channel (a user on a channel) and user (a user online at all).", []string{"kind"}, nil),
		gateways: prometheus.NewDesc("herald_presence_gateways",
			"Gateways in the presence view, this one included.", nil, nil),
		snap: prometheus.NewDesc("herald_presence_snapshot_bytes",
			"Size of the last presence snapshot this gateway sent (0: none yet, or presence is local).", nil, nil),
	}
}

func (pc *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- pc.entries
	ch <- pc.gateways
	ch <- pc.snap
}

func (pc *collector) Collect(ch chan<- prometheus.Metric) {
	p := pc.p
	p.mu.Lock()
	entries := 0
	for _, cv := range p.chans {
		entries += len(cv.users)
	}
	users, gateways, snap := len(p.users), 1+len(p.nodes), p.snapSize
	p.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(pc.entries, prometheus.GaugeValue, float64(entries), "channel")
	ch <- prometheus.MustNewConstMetric(pc.entries, prometheus.GaugeValue, float64(users), "user")
	ch <- prometheus.MustNewConstMetric(pc.gateways, prometheus.GaugeValue, float64(gateways))
	ch <- prometheus.MustNewConstMetric(pc.snap, prometheus.GaugeValue, float64(snap))
}
