package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldgw/herald/producer/amqptest"
)

// Presence timing of the test gateways, and the bounds the test holds them to.
const (
	presenceInterval = 200 * time.Millisecond
	presenceSnapshot = time.Second
	presenceTTL      = 3 * time.Second
	// convergeWithin: a change reaches every gateway's view within one interval (the
	// sender's flush) plus the broker's delivery; the bound leaves room for -race.
	convergeWithin = 2 * time.Second
)

// presenceOf GETs /api/presence?channel=ch on p and returns its users as "user:conns".
func presenceOf(t *testing.T, p *proc, ch string) []string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, p.url("/api/presence?channel="+ch), nil)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET presence from %s: %v", p.name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET presence from %s: %d %s", p.name, resp.StatusCode, data)
	}
	var body struct {
		Users []struct {
			User        string `json:"user"`
			Connections int    `json:"connections"`
		} `json:"users"`
	}
	if err := json.Unmarshal(data, &body); err != nil {
		t.Fatalf("presence from %s: %v in %s", p.name, err, data)
	}
	out := []string{}
	for _, u := range body.Users {
		out = append(out, fmt.Sprintf("%s:%d", u.User, u.Connections))
	}
	return out
}

// converge waits until every gateway in gws lists want on ch, and returns how long it took.
func converge(t *testing.T, what, ch string, want []string, gws ...*proc) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(presenceTTL + 5*time.Second)
	for {
		same := true
		var got []string
		for _, p := range gws {
			if got = presenceOf(t, p, ch); !slices.Equal(got, want) {
				same = false
				break
			}
		}
		if same {
			took := time.Since(start)
			t.Logf("%s: every gateway agrees after %v: %v", what, took.Round(time.Millisecond), want)
			return took
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: gateways never agreed on %v (last: %v)", what, want, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dialUser connects user to p on channel room and reads its welcome.
func dialUser(t *testing.T, p *proc, query string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+p.addr+"/ws?"+query, nil)
	if err != nil {
		t.Fatalf("dial %s ?%s: %v", p.name, query, err)
	}
	t.Cleanup(func() { ws.Close() })
	if _, _, err := ws.ReadMessage(); err != nil {
		t.Fatalf("welcome: %v", err)
	}
	return ws
}

// TestPresenceAcrossGatewaysOnRabbitMQ: users join and leave on two gateways; both
// gateways' answers converge within convergeWithin; a watcher on one gets the other's
// joins; a SIGKILLed gateway's users leave the other's view within the TTL; a restarted
// gateway rebuilds its view of the others from their snapshots at once.
func TestPresenceAcrossGatewaysOnRabbitMQ(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	presenceExchange := exchange + ".presence"
	t.Cleanup(func() { amqptest.Delete(t, url, presenceExchange, presenceExchange) })
	flags := []string{"--presence-channels", "room", "--presence-exchange", presenceExchange,
		"--presence-interval", presenceInterval.String(), "--presence-snapshot-interval", presenceSnapshot.String(),
		"--presence-ttl", presenceTTL.String()}
	a := startGateway(t, "gw-a", url, exchange, stream, flags...)
	b := startGateway(t, "gw-b", url, exchange, stream, flags...)

	watcher := dialUser(t, a, "user=watcher")
	if err := watcher.WriteJSON(map[string]any{"op": "subscribe", "channel": "room", "presence": true, "ref": "w"}); err != nil {
		t.Fatal(err)
	}
	joined := make(chan []string, 100)
	go func() {
		for {
			_, data, err := watcher.ReadMessage()
			if err != nil {
				close(joined)
				return
			}
			var f struct {
				Op    string   `json:"op"`
				Users []string `json:"users"`
			}
			_ = json.Unmarshal(data, &f)
			if f.Op == "join" || f.Op == "leave" {
				joined <- append([]string{f.Op}, f.Users...)
			}
		}
	}()

	dialUser(t, a, "user=alice&channels=room")
	dialUser(t, a, "user=alice&channels=room")
	bob := dialUser(t, b, "user=bob&channels=room")
	dialUser(t, b, "user=dave&channels=room")
	var took []time.Duration
	took = append(took, converge(t, "joins on both gateways", "room", []string{"alice:2", "bob:1", "dave:1", "watcher:1"}, a, b))

	// The watcher on a hears of b's users joining.
	seen := map[string]bool{}
	deadline := time.After(convergeWithin)
	for !(seen["bob"] && seen["dave"]) {
		select {
		case ev, ok := <-joined:
			if !ok {
				t.Fatal("the watcher's connection ended")
			}
			if ev[0] == "join" {
				for _, u := range ev[1:] {
					seen[u] = true
				}
			}
		case <-deadline:
			t.Fatalf("the watcher on gw-a heard of joins of %v, want bob and dave (on gw-b)", seen)
		}
	}

	_ = bob.Close()
	took = append(took, converge(t, "bob leaves gw-b", "room", []string{"alice:2", "dave:1", "watcher:1"}, a, b))
	for _, d := range took {
		if d > convergeWithin {
			t.Errorf("a change took %v to reach every gateway, want at most %v", d, convergeWithin)
		}
	}

	// /api/users on b counts alice's connections on a.
	req, _ := http.NewRequest(http.MethodGet, b.url("/api/users/alice"), nil)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(data), `"online":true`) || !strings.Contains(string(data), `"connections":2`) {
		t.Errorf("alice from gw-b: got %s, want online on 2 connections", data)
	}

	// SIGKILL b: no bye, so a drops dave when b's updates stop, within the TTL.
	b.signal(syscall.SIGKILL)
	_ = b.wait(10 * time.Second)
	gone := converge(t, "gw-b killed", "room", []string{"alice:2", "watcher:1"}, a)
	if gone > presenceTTL+convergeWithin {
		t.Errorf("a killed gateway's users left the view after %v, want within the TTL (%v) and a flush", gone, presenceTTL)
	}

	// A new gw-b rebuilds its view from a's snapshot, which its sync request asks for.
	start := time.Now()
	b2 := startGateway(t, "gw-b", url, exchange, stream, flags...)
	rebuilt := converge(t, "gw-b restarted", "room", []string{"alice:2", "watcher:1"}, b2)
	t.Logf("the restarted gateway rebuilt its view %v after it was ready (%v after its start)", rebuilt.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if rebuilt > convergeWithin {
		t.Errorf("the restarted gateway took %v to rebuild its view, want at most %v", rebuilt, convergeWithin)
	}
	dialUser(t, b2, "user=erin&channels=room")
	converge(t, "erin joins the new gw-b", "room", []string{"alice:2", "erin:1", "watcher:1"}, a, b2)

	// SIGTERM: the gateway says bye, and its users leave the other views at once.
	b2.signal(syscall.SIGTERM)
	_ = b2.wait(15 * time.Second)
	if bye := converge(t, "gw-b drained", "room", []string{"alice:2", "watcher:1"}, a); bye > convergeWithin {
		t.Errorf("a drained gateway's users left the view after %v, want at most %v (it says bye)", bye, convergeWithin)
	}
}
