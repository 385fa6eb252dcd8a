package gateway_test

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
)

// presenceGateway is a gateway on the embedded bus with presence on channel "room",
// users from ?user=, and no handshake limits (tests open many connections).
func presenceGateway(t *testing.T, interval time.Duration) *testGateway {
	t.Helper()
	p := gateway.NewPresence(gateway.PresenceConfig{Node: "test-node", Channels: []string{"room"}, Interval: interval, Logger: gwtest.Logger(t)})
	return newTestGateway(t, gateway.Config{
		InsecureUserParam: true,
		Presence:          p,
		Limits:            gateway.Limits{HandshakeRate: -1, MaxConnectionsPerIP: -1},
	}, nil)
}

// users lists the user ids of a presence answer (objects) or of an event (names).
func users(f frame) []string {
	out := []string{}
	list, _ := f["users"].([]any)
	for _, u := range list {
		switch u := u.(type) {
		case string:
			out = append(out, u)
		case map[string]any:
			out = append(out, u["user"].(string))
		}
	}
	return out
}

// nextEvent reads frames until a join or leave event, and returns it.
func (c *client) nextEvent() frame {
	c.t.Helper()
	for {
		f := c.next()
		if op := f.str("op"); op == "join" || op == "leave" {
			return f
		}
	}
}

func TestPresenceOverWebSocket(t *testing.T) {
	g := presenceGateway(t, 50*time.Millisecond)
	carol := g.dial("user=carol")
	carol.expect("welcome")
	carol.send(`{"op":"subscribe","channel":"room","ref":"s","presence":true}`)
	if f := carol.expect("subscribed"); f["presence"] != true {
		t.Errorf("got %v, want subscribed with presence true", f)
	}
	if f := carol.nextEvent(); f.str("op") != "join" || !reflect.DeepEqual(users(f), []string{"carol"}) {
		t.Errorf("got %v, want carol's own join", f)
	}
	for _, q := range []string{"user=alice&channels=room", "user=alice&channels=room", "user=bob&channels=room", "channels=room", "user=zed&channels=other"} {
		g.dial(q).expect("welcome")
	}
	if f := carol.nextEvent(); f.str("op") != "join" || !reflect.DeepEqual(users(f), []string{"alice", "bob"}) {
		t.Errorf("got %v, want one join of alice and bob", f)
	}

	carol.send(`{"op":"presence","channel":"room","ref":"p1"}`)
	f := carol.expect("presence")
	if f.str("ref") != "p1" || !reflect.DeepEqual(users(f), []string{"alice", "bob", "carol"}) {
		t.Errorf("got %v, want alice, bob, carol", f)
	}
	for k, want := range map[string]int64{"total": 3, "connections": 5, "anonymous": 1} {
		if got, _ := f.num(k); got != want {
			t.Errorf("%s: got %d, want %d", k, got, want)
		}
	}
	if list := f["users"].([]any); list[0].(map[string]any)["connections"] != 2.0 {
		t.Errorf("alice: got %v, want 2 connections", list[0])
	}
	// Pages of two.
	carol.send(`{"op":"presence","channel":"room","ref":"p2","limit":2}`)
	f = carol.expect("presence")
	if !reflect.DeepEqual(users(f), []string{"alice", "bob"}) || f.str("next") != "bob" {
		t.Errorf("page 1: got %v, want alice, bob, next bob", f)
	}
	carol.send(`{"op":"presence","channel":"room","ref":"p3","limit":2,"after":"bob"}`)
	f = carol.expect("presence")
	if !reflect.DeepEqual(users(f), []string{"carol"}) || f["next"] != nil {
		t.Errorf("page 2: got %v, want carol and no next", f)
	}

	// bob leaves, dave comes: one event each.
	bob := g.dial("user=bob&channels=room")
	bob.expect("welcome")
	dave := g.dial("user=dave")
	dave.expect("welcome")
	dave.send(`{"op":"subscribe","channel":"room","ref":"d"}`)
	if f := carol.nextEvent(); f.str("op") != "join" || !reflect.DeepEqual(users(f), []string{"dave"}) {
		t.Errorf("got %v, want dave's join (bob's second connection is no news)", f)
	}

	for _, tt := range []struct{ frame, code string }{
		{`{"op":"presence","channel":"other","ref":"e1"}`, gateway.CodeForbidden},
		{`{"op":"presence","ref":"e2"}`, gateway.CodeBadRequest},
		{`{"op":"presence","channel":"room","limit":0,"ref":"e3"}`, gateway.CodeBadRequest},
		{`{"op":"presence","channel":"room","limit":"5","ref":"e4"}`, gateway.CodeBadRequest},
	} {
		carol.send(tt.frame)
		if f := carol.expect("error"); f.str("code") != tt.code {
			t.Errorf("%s: got %v, want error %s", tt.frame, f, tt.code)
		}
	}
	// A subscribe that asks for events where presence is off gets none, and says so.
	carol.send(`{"op":"subscribe","channel":"other","ref":"o","presence":true}`)
	if f := carol.expect("subscribed"); f["presence"] != nil {
		t.Errorf("got %v, want subscribed without presence", f)
	}
}

func TestPresenceHTTP(t *testing.T) {
	g := presenceGateway(t, 50*time.Millisecond)
	for _, q := range []string{"user=alice&channels=room", "user=alice&channels=room", "user=bob&channels=room", "user=erin"} {
		g.dial(q).expect("welcome")
	}
	status, body := g.api(http.MethodGet, testKey, "/api/presence?channel=room", "")
	if status != http.StatusOK || !reflect.DeepEqual(users(frame(body)), []string{"alice", "bob"}) || body["connections"] != 3.0 {
		t.Errorf("got %d %v, want 200 with alice and bob on 3 connections", status, body)
	}
	status, body = g.api(http.MethodGet, testKey, "/api/presence?channel=room&limit=1&after=alice", "")
	if status != http.StatusOK || !reflect.DeepEqual(users(frame(body)), []string{"bob"}) {
		t.Errorf("page after alice: got %d %v", status, body)
	}
	status, body = g.api(http.MethodGet, testKey, "/api/users/alice", "")
	if status != http.StatusOK || body["online"] != true || body["connections"] != 2.0 || body["gateways"] != 1.0 {
		t.Errorf("alice: got %d %v, want online on 2 connections, 1 gateway", status, body)
	}
	if status, body = g.api(http.MethodGet, testKey, "/api/users/erin", ""); body["online"] != true {
		t.Errorf("erin (on no channel): got %d %v, want online", status, body)
	}
	if status, body = g.api(http.MethodGet, testKey, "/api/users/nobody", ""); status != http.StatusOK || body["online"] != false {
		t.Errorf("nobody: got %d %v, want 200 offline", status, body)
	}
	for _, tt := range []struct {
		key, path string
		status    int
	}{
		{"", "/api/presence?channel=room", http.StatusUnauthorized},
		{"wrong", "/api/users/alice", http.StatusUnauthorized},
		{testKey, "/api/presence", http.StatusBadRequest},
		{testKey, "/api/presence?channel=a%20b", http.StatusBadRequest},
		{testKey, "/api/presence?channel=room&limit=x", http.StatusBadRequest},
		{testKey, "/api/presence?channel=room&limit=0", http.StatusBadRequest},
		{testKey, "/api/presence?channel=other", http.StatusNotFound},
	} {
		if status, body := g.api(http.MethodGet, tt.key, tt.path, ""); status != tt.status || body["error"] == nil {
			t.Errorf("GET %s: got %d %v, want %d with an error body", tt.path, status, body, tt.status)
		}
	}
}

// TestPresenceCoalescesReconnectStorm: 500 users on a channel each drop their connection
// and reconnect within about a second. A watcher of the channel gets at most one join
// and one leave frame per interval, not a thousand events, and the events it gets, applied
// to what it knew, give the presence of the end.
func TestPresenceCoalescesReconnectStorm(t *testing.T) {
	const n, interval = 500, 250 * time.Millisecond
	g := presenceGateway(t, interval)
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = g.dial(fmt.Sprintf("user=u%03d&channels=room", i))
		clients[i].expect("welcome")
	}
	w := g.dial("user=watcher")
	w.expect("welcome")
	w.send(`{"op":"subscribe","channel":"room","ref":"s","presence":true}`)
	w.expect("subscribed")
	w.nextEvent() // its own join
	w.send(`{"op":"presence","channel":"room","ref":"p","limit":1000}`)
	online := map[string]bool{}
	for _, u := range users(w.expect("presence")) {
		online[u] = true
	}
	if len(online) != n+1 {
		t.Fatalf("before the storm: %d users online, want %d", len(online), n+1)
	}

	// The storm: every client closes and connects again, over a second, 25 at a time. The watcher's
	// frames are read until the answer to a presence op sent at the end.
	var frames []frame
	var final frame
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		_ = w.ws.SetReadDeadline(time.Now().Add(time.Minute))
		for {
			_, data, err := w.ws.ReadMessage()
			if err != nil {
				t.Errorf("watcher: %v", err)
				return
			}
			var f frame
			_ = json.Unmarshal(data, &f)
			if f.str("op") == "presence" {
				final = f
				return
			}
			frames = append(frames, f)
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan int)
	for range 25 {
		wg.Go(func() {
			for i := range next {
				_ = clients[i].ws.Close()
				c, _, err := g.tryDial(fmt.Sprintf("user=u%03d&channels=room", i))
				if err != nil {
					t.Errorf("redial u%03d: %v", i, err)
					continue
				}
				_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, _, _ = c.ws.ReadMessage() // welcome
				clients[i] = c
			}
		})
	}
	pace := time.NewTicker(time.Second / n) // spread over a second, across several windows
	for i := range clients {
		<-pace.C
		next <- i
	}
	pace.Stop()
	close(next)
	wg.Wait()
	storm := time.Since(start)
	time.Sleep(3 * interval) // the last window's events
	w.send(`{"op":"presence","channel":"room","ref":"q","limit":1000}`)
	<-readDone

	windows := int(math.Ceil(float64(storm)/float64(interval))) + 3
	reported := 0
	for _, f := range frames {
		if op := f.str("op"); op != "join" && op != "leave" {
			continue
		}
		for _, u := range users(f) {
			online[u] = f.str("op") == "join"
			reported++
		}
	}
	t.Logf("%d reconnects in %v: %d event frames, %d users reported (%d would be reported uncoalesced)", n, storm.Round(time.Millisecond), len(frames), reported, 2*n)
	if len(frames) > 2*windows {
		t.Errorf("got %d event frames over %d windows of %v, want at most one join and one leave a window", len(frames), windows, interval)
	}
	var got []string
	for u, on := range online {
		if on {
			got = append(got, u)
		}
	}
	sort.Strings(got)
	if want := users(final); !reflect.DeepEqual(got, want) || len(want) != n+1 {
		t.Errorf("events applied to the list before the storm give %d users, presence now lists %d (want %d)", len(got), len(want), n+1)
	}
}
