package presence

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/wire"
)

// watcher is a hub member that keeps the JSON of the frames queued to it.
type watcher struct {
	usr    string
	mu     sync.Mutex
	frames []map[string]any
}

func (w *watcher) Enqueue(f *wire.Frame) {
	var v map[string]any
	payload := f.Wire[2:] // replies here are short: a 2-byte header
	if f.Wire[1] == 126 {
		payload = f.Wire[4:]
	}
	if err := json.Unmarshal(payload, &v); err != nil {
		panic(err)
	}
	w.mu.Lock()
	w.frames = append(w.frames, v)
	w.mu.Unlock()
}
func (w *watcher) User() string { return w.usr }

// take returns the frames queued since the last take.
func (w *watcher) take() []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.frames
	w.frames = nil
	return out
}

// events renders event frames as "join ch a,b" lines, for comparison.
func events(frames []map[string]any) []string {
	var out []string
	for _, f := range frames {
		line := fmt.Sprintf("%s %s", f["op"], f["channel"])
		for _, u := range f["users"].([]any) {
			line += " " + u.(string)
		}
		if f["more"] == true {
			line += " +more"
		}
		out = append(out, line)
	}
	slices.Sort(out)
	return out
}

// testHub makes the calls into presence that the gateway's Hub makes (under its lock)
// as connections join and leave, subscribe and unsubscribe.
type testHub struct {
	p    *Presence
	subs map[Member]map[string]bool
}

func (h *testHub) join(m Member, channels []string) {
	h.p.Connected(m)
	subs := map[string]bool{}
	h.subs[m] = subs
	for _, ch := range channels {
		if !subs[ch] {
			subs[ch] = true
			h.p.Joined(ch, m, false)
		}
	}
}

func (h *testHub) leave(m Member) {
	for ch := range h.subs[m] {
		h.p.Left(ch, m)
	}
	h.p.Disconnected(m)
	delete(h.subs, m)
}

func (h *testHub) subscribe(m Member, ch string, watch bool) {
	if h.subs[m][ch] {
		h.p.Watch(ch, m, watch)
		return
	}
	h.subs[m][ch] = true
	h.p.Joined(ch, m, watch)
}

func (h *testHub) unsubscribe(m Member, ch string) {
	if h.subs[m][ch] {
		delete(h.subs[m], ch)
		h.p.Left(ch, m)
	}
}

func newTestPresence(t *testing.T, node string, cfg Config) (*Presence, *testHub) {
	t.Helper()
	cfg.Node = node
	if cfg.Channels == nil {
		cfg.Channels = []string{"room", "chat:*"}
	}
	p := New(cfg)
	return p, &testHub{p: p, subs: map[Member]map[string]bool{}}
}

func TestPresenceCountsThisGateway(t *testing.T) {
	p, h := newTestPresence(t, "a", Config{Exclude: []string{"chat:secret"}})
	alice1, alice2, bob, anon := &watcher{usr: "alice"}, &watcher{usr: "alice"}, &watcher{usr: "bob"}, &watcher{}
	h.join(alice1, []string{"room", "other"})
	h.join(alice2, []string{"room"})
	h.join(bob, []string{"room", "chat:x", "chat:secret"})
	h.join(anon, []string{"room"})

	got := p.Channel("room", "", 0)
	want := ChannelPresence{Channel: "room", Users: []PresenceUser{{"alice", 2}, {"bob", 1}}, Total: 2, Connections: 4, Anonymous: 1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("room: got %+v, want %+v", got, want)
	}
	for _, ch := range []string{"other", "chat:secret"} {
		if got := p.Channel(ch, "", 0); got.Total != 0 || got.Connections != 0 {
			t.Errorf("%s has no presence: got %+v", ch, got)
		}
	}
	if got := p.Channel("chat:x", "", 0); got.Total != 1 {
		t.Errorf("chat:x: got %+v, want bob", got)
	}
	// Pages, in order of user id.
	page := p.Channel("room", "", 1)
	if len(page.Users) != 1 || page.Users[0].User != "alice" || page.Next != "alice" {
		t.Errorf("first page: got %+v, want alice then next alice", page)
	}
	page = p.Channel("room", page.Next, 1)
	if len(page.Users) != 1 || page.Users[0].User != "bob" || page.Next != "" {
		t.Errorf("second page: got %+v, want bob and no next", page)
	}
	if got := p.User("alice"); got != (UserPresence{User: "alice", Online: true, Connections: 2, Gateways: 1}) {
		t.Errorf("alice: got %+v", got)
	}

	h.unsubscribe(alice1, "room")
	h.leave(bob)
	h.leave(anon)
	got = p.Channel("room", "", 0)
	want = ChannelPresence{Channel: "room", Users: []PresenceUser{{"alice", 1}}, Total: 1, Connections: 1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after leaves: got %+v, want %+v", got, want)
	}
	if got := p.User("bob"); got.Online || got.Connections != 0 {
		t.Errorf("bob left: got %+v", got)
	}
	h.leave(alice1)
	h.leave(alice2)
	if len(p.chans) != 0 || len(p.users) != 0 || len(p.self.chans)+len(p.self.anon)+len(p.self.users) != 0 {
		t.Errorf("everyone left, yet presence holds %v %v %+v", p.chans, p.users, p.self)
	}
}

func TestPresenceEventsCoalesce(t *testing.T) {
	p, h := newTestPresence(t, "a", Config{MaxEventUsers: 2})
	w := &watcher{usr: "w"}
	h.join(w, nil)
	h.subscribe(w, "room", true)
	flush := func() { p.flush(context.Background(), nil, time.Now()) }
	flush()
	if got := events(w.take()); !reflect.DeepEqual(got, []string{"join room w"}) {
		t.Errorf("the watcher's own join: got %v", got)
	}

	// alice comes and goes within one window: nothing. bob comes: join.
	alice, bob := &watcher{usr: "alice"}, &watcher{usr: "bob"}
	h.join(alice, []string{"room"})
	h.leave(alice)
	h.join(bob, []string{"room"})
	flush()
	if got := events(w.take()); !reflect.DeepEqual(got, []string{"join room bob"}) {
		t.Errorf("got %v, want bob's join alone", got)
	}
	// bob's second connection is no news; his last leaving is.
	bob2 := &watcher{usr: "bob"}
	h.join(bob2, []string{"room"})
	flush()
	if got := w.take(); len(got) != 0 {
		t.Errorf("a second connection of bob: got %v, want no event", events(got))
	}
	h.leave(bob)
	h.leave(bob2)
	h.join(alice, []string{"room"})
	flush()
	if got := events(w.take()); !reflect.DeepEqual(got, []string{"join room alice", "leave room bob"}) {
		t.Errorf("got %v", got)
	}
	// More changes than an event lists: the first ones, and "more".
	for _, u := range []string{"c", "d", "e"} {
		h.join(&watcher{usr: u}, []string{"room"})
	}
	flush()
	if got := events(w.take()); !reflect.DeepEqual(got, []string{"join room c d +more"}) {
		t.Errorf("got %v", got)
	}
	// A connection that stops watching gets nothing more; nor does an unwatched channel
	// keep changes.
	h.subscribe(w, "room", false)
	h.join(&watcher{usr: "f"}, []string{"room"})
	flush()
	if got := w.take(); len(got) != 0 {
		t.Errorf("after unwatching: got %v", events(got))
	}
	if len(p.changes) != 0 || len(p.watchers) != 0 {
		t.Errorf("nobody watches, yet presence keeps %v %v", p.changes, p.watchers)
	}
}

// fakeCluster is an in-memory fan-out of presence updates, to test how gateways merge
// each other's updates (the AMQP link itself is tested in the consumer package, and
// gateways on RabbitMQ in herald-gateway's process tests).
type fakeCluster struct {
	mu      sync.Mutex
	members []*Presence
	down    bool // drop every update
	sent    []presenceUpdate
}

func (fc *fakeCluster) Send(_ context.Context, body []byte) error {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.down {
		return fmt.Errorf("fake link down")
	}
	var u presenceUpdate
	_ = json.Unmarshal(body, &u)
	fc.sent = append(fc.sent, u)
	for _, p := range fc.members {
		p.HandlePresence(body)
	}
	return nil
}

func (fc *fakeCluster) types() []string {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	var out []string
	for _, u := range fc.sent {
		out = append(out, u.Node+":"+u.Type)
	}
	fc.sent = nil
	return out
}

func TestPresenceMergesGateways(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.Series{PresenceUpdates: UpdateTypes()})
	cfg := Config{TTL: time.Minute, SnapshotInterval: time.Hour, Metrics: m}
	pa, ha := newTestPresence(t, "a", cfg)
	pb, hb := newTestPresence(t, "b", cfg)
	fc := &fakeCluster{members: []*Presence{pa, pb}}
	now := time.Now()
	clock := func() time.Time { return now }
	pa.clock, pb.clock = clock, clock
	flush := func(ps ...*Presence) {
		for _, p := range ps {
			now = now.Add(time.Second)
			p.flush(context.Background(), fc, now)
		}
	}
	flush(pa, pb) // start: each asks for the others' snapshots and sends its own
	if got := fc.types(); !slices.Contains(got, "a:sync") || !slices.Contains(got, "b:snapshot") {
		t.Errorf("first updates: got %v, want syncs and snapshots", got)
	}

	alice, bob, bob2, anon := &watcher{usr: "alice"}, &watcher{usr: "bob"}, &watcher{usr: "bob"}, &watcher{}
	ha.join(alice, []string{"room"})
	ha.join(bob, []string{"room"})
	hb.join(bob2, []string{"room"})
	hb.join(anon, []string{"room"})
	w := &watcher{usr: "w"}
	hb.join(w, nil)
	hb.subscribe(w, "room", true)
	flush(pa, pb, pb) // a's delta reaches b; b's events go out at its next flush
	want := ChannelPresence{Channel: "room", Users: []PresenceUser{{"alice", 1}, {"bob", 2}, {"w", 1}}, Total: 3, Connections: 5, Anonymous: 1}
	for name, p := range map[string]*Presence{"a": pa, "b": pb} {
		if got := p.Channel("room", "", 0); !reflect.DeepEqual(got, want) {
			t.Errorf("gateway %s: got %+v, want %+v", name, got, want)
		}
	}
	if got := pb.User("bob"); got != (UserPresence{User: "bob", Online: true, Connections: 2, Gateways: 2}) {
		t.Errorf("bob on b: got %+v", got)
	}
	// bob was on b before w watched, and his connection on a is no news.
	if got := events(w.take()); !reflect.DeepEqual(got, []string{"join room alice w"}) {
		t.Errorf("b's watcher: got %v", got)
	}

	// A lost delta: b applies the next one and asks for snapshots.
	fc.mu.Lock()
	fc.down = true
	fc.mu.Unlock()
	carol := &watcher{usr: "carol"}
	ha.join(carol, []string{"room"})
	flush(pa) // lost; a will send a snapshot next
	fc.mu.Lock()
	fc.down = false
	fc.mu.Unlock()
	if got := pb.Channel("room", "", 0).Total; got != 3 {
		t.Fatalf("b saw a lost update: %d users", got)
	}
	flush(pa, pb)
	if got := pb.Channel("room", "", 0).Total; got != 4 {
		t.Errorf("after a's snapshot: b sees %d users, want 4", got)
	}
	if got := events(w.take()); !reflect.DeepEqual(got, []string{"join room carol"}) {
		t.Errorf("b's watcher: got %v", got)
	}

	// a goes silent: past the TTL, b drops a's users, and says so.
	now = now.Add(2 * time.Minute)
	flush(pb)
	want = ChannelPresence{Channel: "room", Users: []PresenceUser{{"bob", 1}, {"w", 1}}, Total: 2, Connections: 3, Anonymous: 1}
	if got := pb.Channel("room", "", 0); !reflect.DeepEqual(got, want) {
		t.Errorf("after a's TTL: got %+v, want %+v", got, want)
	}
	if got := events(w.take()); !reflect.DeepEqual(got, []string{"leave room alice carol"}) {
		t.Errorf("b's watcher: got %v", got)
	}
	if got := gwtest.Counter(t, reg, "herald_presence_expired_total"); got != 1 {
		t.Errorf("expired: got %v, want 1", got)
	}

	// a new process of a (same node name) rebuilds b's view of a; the old instance is gone.
	pa2, ha2 := newTestPresence(t, "a", cfg)
	pa2.clock = clock
	fc.mu.Lock()
	fc.members = append(fc.members, pa2)
	fc.mu.Unlock()
	ha2.join(&watcher{usr: "dave"}, []string{"room"})
	flush(pa2, pb, pa2) // pa2 asks for a sync and sends its snapshot; b answers
	if got := pb.Channel("room", "", 0).Total; got != 3 {
		t.Errorf("b after a's restart: %d users, want 3 (bob, w, dave)", got)
	}
	if got := pa2.Channel("room", "", 0).Total; got != 3 {
		t.Errorf("a's new process rebuilt %d users, want 3", got)
	}
	// bye: b drops a at once.
	pa2.Leave(context.Background(), fc)
	if got := pb.Channel("room", "", 0).Total; got != 2 {
		t.Errorf("after a's bye: b sees %d users, want 2", got)
	}
}

func TestPresenceDropsInvalidUpdates(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.Series{PresenceUpdates: UpdateTypes()})
	p, _ := newTestPresence(t, "a", Config{Metrics: m})
	for _, body := range []string{
		`not json`,
		`{"v":2,"type":"snapshot","inst":"x"}`,
		`{"v":1,"type":"nope","inst":"x"}`,
		`{"v":1,"type":"snapshot"}`,
		`{"v":1,"type":"snapshot","inst":"x","chans":{"bad channel":{"u":1}}}`,
		`{"v":1,"type":"snapshot","inst":"x","chans":{"room":{"":1}}}`,
		`{"v":1,"type":"snapshot","inst":"x","chans":{"room":{"u":-1}}}`,
		`{"v":1,"type":"snapshot","inst":"x","users":{"u":99999999999}}`,
		`{"v":1,"type":"delta","inst":"x","anon":{"room":"3"}}`,
	} {
		p.HandlePresence([]byte(body))
	}
	if got := gwtest.CounterWith(t, reg, "herald_presence_updates_total", "type", "invalid"); got != 9 {
		t.Errorf("invalid updates counted: got %v, want 9", got)
	}
	if len(p.nodes) != 0 || len(p.chans) != 0 {
		t.Errorf("an invalid update changed the view: %v %v", p.nodes, p.chans)
	}
}
