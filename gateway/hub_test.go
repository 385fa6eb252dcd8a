package gateway

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/producer/message"
)

// recorder is a hub member that records the offsets queued to it.
type recorder struct {
	name string
	usr  string
	mu   sync.Mutex
	got  []int64
	skip int64
}

func newRecorder(name, user string) *recorder { return &recorder{name: name, usr: user, skip: noSkip} }

func (r *recorder) Enqueue(f *wire.Frame) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f.Offset >= 0 && f.Offset <= r.skip {
		return
	}
	r.got = append(r.got, f.Offset)
}
func (r *recorder) User() string { return r.usr }
func (r *recorder) SkipThrough(off int64) {
	r.mu.Lock()
	r.skip = off
	r.mu.Unlock()
}
func (r *recorder) offsets() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func msg(off int64, channel string, users ...string) message.Message {
	return message.Message{ID: "m" + string(rune('a'+off)), Offset: off, Channel: channel, Users: users,
		Data: json.RawMessage(`1`), Time: time.Unix(1000, 0)}
}

func TestHubRouting(t *testing.T) {
	h := NewHub(HubConfig{})
	alice := newRecorder("alice", "alice")
	alice2 := newRecorder("alice2", "alice")
	bob := newRecorder("bob", "bob")
	anon := newRecorder("anon", "")
	noop := func(int64, bool) {}
	h.join(alice, []string{"news"}, noop)
	h.join(alice2, nil, noop)
	h.join(bob, []string{"news", "sport", "news"}, noop)
	h.join(anon, []string{"sport"}, noop)

	tests := []struct {
		m    message.Message
		want []*recorder
	}{
		{msg(0, ""), []*recorder{alice, alice2, bob, anon}},
		{msg(1, "news"), []*recorder{alice, bob}},
		{msg(2, "sport"), []*recorder{bob, anon}},
		{msg(3, "empty"), nil},
		{msg(4, "", "alice"), []*recorder{alice, alice2}},
		{msg(5, "sport", "alice", "alice"), []*recorder{alice, alice2}}, // users win; listed twice, once
		{msg(6, "", "carol"), nil},
	}
	want := map[*recorder][]int64{}
	for _, tt := range tests {
		h.Dispatch(tt.m)
		for _, r := range tt.want {
			want[r] = append(want[r], tt.m.Offset)
		}
	}
	for _, r := range []*recorder{alice, alice2, bob, anon} {
		if got := r.offsets(); !slices.Equal(got, want[r]) {
			t.Errorf("%s: got %v, want %v", r.name, got, want[r])
		}
	}
	if chans, subs := h.Channels(); chans != 2 || subs != 4 {
		t.Errorf("got %d channels, %d subscriptions; want 2, 4", chans, subs)
	}

	h.unsubscribe(bob, "news", func() {})
	h.leave(alice)
	h.leave(alice) // twice is harmless
	h.Dispatch(msg(7, "news"))
	h.Dispatch(msg(8, "", "alice"))
	if got := bob.offsets(); slices.Contains(got, 7) {
		t.Errorf("bob got %v after unsubscribing from news", got)
	}
	if got := alice.offsets(); slices.Contains(got, 8) || slices.Contains(got, 7) {
		t.Errorf("alice got %v after leaving", got)
	}
	if got := alice2.offsets(); !slices.Contains(got, 8) {
		t.Errorf("alice2 got %v, want offset 8", got)
	}
	if h.Len() != 3 {
		t.Errorf("got %d members, want 3", h.Len())
	}
	if chans, _ := h.Channels(); chans != 1 {
		t.Errorf("got %d channels, want 1 (news has no subscriber left)", chans)
	}
}

func TestHubJoinAtAndSubscribeAt(t *testing.T) {
	h := NewHub(HubConfig{})
	h.SetLogStart(-1)
	for i := int64(0); i < 5; i++ {
		h.Dispatch(msg(i, "c"))
	}
	r := newRecorder("r", "")
	if h.joinAt(r, []string{"c"}, 3, func() {}) {
		t.Fatal("joinAt 3 after offset 4 was dispatched: got true, want false (the replay must go on)")
	}
	ended := false
	if !h.joinAt(r, []string{"c"}, 6, func() { ended = true }) || !ended {
		t.Fatal("joinAt 6 at offset 4: got false, want a join (replay ahead of live delivery)")
	}
	for i := int64(5); i < 9; i++ {
		h.Dispatch(msg(i, "c"))
	}
	if got := r.offsets(); !slices.Equal(got, []int64{7, 8}) {
		t.Errorf("got %v, want [7 8]: offsets through 6 came from the replay", got)
	}

	s := newRecorder("s", "")
	h.join(s, nil, func(int64, bool) {})
	if h.subscribeAt(s, "d", 7, false, func() {}) {
		t.Error("subscribeAt 7 after offset 8: got true, want false")
	}
	if !h.subscribeAt(s, "d", 10, false, func() {}) {
		t.Fatal("subscribeAt 10: got false")
	}
	for i := int64(9); i < 12; i++ {
		h.Dispatch(msg(i, "d"))
	}
	if got := s.offsets(); !slices.Equal(got, []int64{11}) {
		t.Errorf("got %v, want [11]", got)
	}
}

func TestDedupWindow(t *testing.T) {
	d := newDedup(time.Minute, 3)
	t0 := time.Unix(0, 0)
	steps := []struct {
		id   string
		at   time.Duration
		want bool
	}{
		{"a", 0, false},
		{"a", 30 * time.Second, true},
		{"b", 31 * time.Second, false},
		{"a", 61 * time.Second, false}, // out of the window: delivered again
		{"c", 62 * time.Second, false},
		{"d", 63 * time.Second, false}, // over the cap of 3: the oldest id is forgotten
		{"b", 64 * time.Second, false},
		{"d", 65 * time.Second, true},
	}
	for i, s := range steps {
		if got := d.seen(s.id, t0.Add(s.at)); got != s.want {
			t.Errorf("step %d: seen(%s at %v) = %v, want %v", i, s.id, s.at, got, s.want)
		}
	}
}

func TestHubDropsDuplicateIDs(t *testing.T) {
	h := NewHub(HubConfig{})
	r := newRecorder("r", "")
	h.join(r, nil, func(int64, bool) {})
	for off, id := range []string{"x", "y", "x", "z", "y"} {
		m := msg(int64(off), "")
		m.ID = id
		h.Dispatch(m)
	}
	if got := r.offsets(); !slices.Equal(got, []int64{0, 1, 3}) {
		t.Errorf("got %v, want [0 1 3]", got)
	}
	if !h.duplicate(2) || !h.duplicate(4) || h.duplicate(3) {
		t.Error("duplicate offsets: want 2 and 4 remembered, 3 not")
	}
}

// TestHubTellsPresence: the hub tells presence of every connection and subscription that
// comes and goes, once each (internal/presence tests what presence makes of it).
func TestHubTellsPresence(t *testing.T) {
	p := NewPresence(PresenceConfig{Node: "a", Channels: []string{"room"}})
	h := NewHub(HubConfig{Presence: p})
	noop := func(int64, bool) {}
	alice, bob, anon := newRecorder("alice", "alice"), newRecorder("bob", "bob"), newRecorder("anon", "")
	h.join(alice, []string{"room", "room"}, noop)
	h.join(bob, nil, noop)
	h.subscribe(bob, "room", true, func() {})
	h.subscribe(bob, "room", false, func() {}) // subscribed again: not counted twice
	h.join(anon, []string{"room"}, noop)
	want := ChannelPresence{Channel: "room", Users: []PresenceUser{{User: "alice", Connections: 1}, {User: "bob", Connections: 1}}, Total: 2, Connections: 3, Anonymous: 1}
	if got := p.Channel("room", "", 0); !reflect.DeepEqual(got, want) {
		t.Errorf("room: got %+v, want %+v", got, want)
	}
	h.unsubscribe(alice, "room", func() {})
	h.leave(bob)
	want = ChannelPresence{Channel: "room", Users: []PresenceUser{}, Connections: 1, Anonymous: 1}
	if got := p.Channel("room", "", 0); !reflect.DeepEqual(got, want) {
		t.Errorf("room after alice unsubscribed and bob left: got %+v, want %+v", got, want)
	}
	if got := p.User("alice"); !got.Online || got.Connections != 1 {
		t.Errorf("alice, still connected: got %+v", got)
	}
	if got := p.User("bob"); got.Online {
		t.Errorf("bob left: got %+v", got)
	}
	h.leave(alice)
	h.leave(anon)
	if got := p.Channel("room", "", 0); got.Connections != 0 || p.User("alice").Online {
		t.Errorf("everyone left: room %+v, alice %+v", got, p.User("alice"))
	}
}

// TestReplayRoutesAsLiveDelivery: the message a replay gives a connection (reaches, and
// routedTo for a channel's replay) is exactly the one live delivery gives it.
func TestReplayRoutesAsLiveDelivery(t *testing.T) {
	type conn struct {
		user     string
		channels []string
	}
	conns := []conn{{"alice", nil}, {"alice", []string{"news"}}, {"bob", []string{"news", "sport"}}, {"", []string{"sport"}}, {"", nil}}
	msgs := []message.Message{msg(0, ""), msg(1, "news"), msg(2, "sport"), msg(3, "", "alice"), msg(4, "news", "bob"),
		msg(5, "weather"), msg(6, "", "carol", "alice")}
	h := NewHub(HubConfig{DedupWindow: -1})
	recs := make([]*recorder, len(conns))
	for i, c := range conns {
		recs[i] = newRecorder(fmt.Sprint(i), c.user)
		h.join(recs[i], c.channels, func(int64, bool) {})
	}
	for _, m := range msgs {
		h.Dispatch(m)
	}
	for i, c := range conns {
		got := recs[i].offsets()
		for _, m := range msgs {
			if live, replay := slices.Contains(got, m.Offset), reaches(&m, c.user, c.channels); live != replay {
				t.Errorf("connection of %q on %v, message %d: live delivery %v, replay %v", c.user, c.channels, m.Offset, live, replay)
			}
			for _, ch := range []string{"news", "sport", "weather"} {
				live := slices.Contains(got, m.Offset) && slices.Contains(c.channels, ch) && m.Channel == ch && len(m.Users) == 0
				if routedTo(&m, ch) && slices.Contains(c.channels, ch) != live {
					t.Errorf("channel %s, message %d: a replay of it gives it, live delivery to its subscriber %q does not", ch, m.Offset, c.user)
				}
			}
		}
	}
}

// TestHubDedupClockWithoutTime: the deduplication window of messages without a time runs
// on the time the hub received them, so an id comes back after the window; and an id the
// log derived from an offset is never taken for a retry.
func TestHubDedupClockWithoutTime(t *testing.T) {
	const window = 50 * time.Millisecond
	h := NewHub(HubConfig{DedupWindow: window})
	r := newRecorder("r", "")
	h.join(r, nil, func(int64, bool) {})
	send := func(id string, off int64) {
		h.Dispatch(message.Message{ID: id, Offset: off, Data: json.RawMessage(`1`)})
	}
	send("retry", 1)
	send("retry", 2) // within the window: a retry, dropped
	time.Sleep(2 * window)
	send("retry", 3) // past the window: delivered again
	send(message.OffsetID(4), 4)
	send(message.OffsetID(4), 5) // the same derived id (a stream deleted and declared again)
	got := r.offsets()
	if want := []int64{1, 3, 4, 5}; !slices.Equal(got, want) {
		t.Errorf("delivered offsets: got %v, want %v", got, want)
	}
}

// TestResubscribeKeepsReplaySkip: subscribeAt stores the replay's skip offset in the
// channel index; a later plain subscribe to the same channel (the client repeats its
// subscribe) must not overwrite it with noSkip, or messages the replay already gave
// (dispatch lagging behind the embedded log) would be delivered a second time live.
func TestResubscribeKeepsReplaySkip(t *testing.T) {
	h := NewHub(HubConfig{DedupWindow: -1})
	h.SetLogStart(5) // dispatched through 5; the log (and the replay) reached 10
	m := newRecorder("m", "")
	h.join(m, nil, func(int64, bool) {})
	if !h.subscribeAt(m, "c", 10, false, func() {}) {
		t.Fatal("subscribeAt refused")
	}
	h.subscribe(m, "c", false, func() {}) // the client subscribes again, without since
	for off := int64(6); off <= 11; off++ {
		h.Dispatch(message.Message{Channel: "c", Offset: off, Data: json.RawMessage(`1`)})
	}
	if got := m.offsets(); len(got) != 1 || got[0] != 11 {
		t.Fatalf("live delivery after the replay through 10 gave offsets %v, want [11]", got)
	}
}
