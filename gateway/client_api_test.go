package gateway_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
)

// clientCall POSTs body to a client endpoint with the request headers h, and returns the
// status, the header and the decoded JSON answer.
func (g *testGateway) clientCall(method, path, body string, h http.Header) (int, http.Header, map[string]any) {
	g.t.Helper()
	req, _ := http.NewRequest(method, g.http.URL+path, strings.NewReader(body))
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(data) > 0 {
		if err := json.Unmarshal(data, &out); err != nil {
			g.t.Fatalf("%s %s answered %d with %q: not JSON", method, path, resp.StatusCode, data)
		}
	}
	return resp.StatusCode, resp.Header, out
}

func errCode(out map[string]any) string {
	e, _ := out["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func TestClientPublishOverHTTP(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret, Cookie: "herald_token"},
		AllowedOrigins: []string{"https://app.example.com"},
	}, nil)
	tok := hs(t, "alice", time.Hour, claims{"channels": []string{"news"}, "publish": []string{"news"}})
	bearer := http.Header{"Authorization": {"Bearer " + tok}}
	stream := g.sseDial("channels=news&token="+tok, nil)
	stream.expect("welcome")

	code, _, out := g.clientCall("POST", "/api/client/publish", `{"channel":"news","data":{"x":1},"id":"m1"}`, bearer)
	if code != http.StatusOK || out["op"] != "ack" || out["id"] != "m1" {
		t.Fatalf("publish: HTTP %d %v, want 200 ack m1", code, out)
	}
	f := stream.expect("message").frame(t)
	if f.str("from") != "alice" || f.str("id") != "m1" {
		t.Errorf("delivered %v, want id m1 from alice", f)
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_messages_published_total", "source", "client_http"); n != 1 {
		t.Errorf("published{source=client_http}: %v, want 1", n)
	}
	for _, tt := range []struct {
		name, body string
		h          http.Header
		want       int
		code       string
	}{
		{"forbidden channel", `{"channel":"other","data":1}`, bearer, http.StatusForbidden, "forbidden"},
		{"no token", `{"channel":"news","data":1}`, nil, http.StatusUnauthorized, "token_missing"},
		{"expired token", `{"channel":"news","data":1}`, http.Header{"Authorization": {"Bearer " + hs(t, "alice", -time.Hour, nil)}}, http.StatusUnauthorized, "token_expired"},
		{"not an object", `[1]`, bearer, http.StatusBadRequest, "bad_request"},
		{"another op", `{"op":"subscribe","channel":"news"}`, bearer, http.StatusBadRequest, "bad_request"},
		{"no data", `{"channel":"news"}`, bearer, http.StatusBadRequest, "bad_request"},
		// A page of another site sends the user's cookie: not read from its origin.
		{"cookie cross-site", `{"channel":"news","data":1}`, http.Header{"Cookie": {"herald_token=" + tok}, "Origin": {"https://evil.example"}}, http.StatusForbidden, "origin"},
		{"cookie, no fetch metadata", `{"channel":"news","data":1}`, http.Header{"Cookie": {"herald_token=" + tok}}, http.StatusUnauthorized, "token_missing"},
	} {
		code, _, out := g.clientCall("POST", "/api/client/publish", tt.body, tt.h)
		if code != tt.want || errCode(out) != tt.code {
			t.Errorf("%s: HTTP %d %v, want %d %s", tt.name, code, out, tt.want, tt.code)
		}
	}

	// CORS: the preflight and the answer, for an allowed origin only.
	origin := http.Header{"Origin": {"https://app.example.com"}, "Access-Control-Request-Method": {"POST"}}
	code, h, _ := g.clientCall("OPTIONS", "/api/client/publish", "", origin)
	if code != http.StatusNoContent || h.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		h.Get("Access-Control-Allow-Credentials") != "true" || !strings.Contains(h.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Errorf("preflight: HTTP %d %v", code, h)
	}
	if code, _, _ := g.clientCall("OPTIONS", "/api/client/publish", "", http.Header{"Origin": {"https://evil.example"}}); code != http.StatusForbidden {
		t.Errorf("preflight from another origin: HTTP %d, want 403", code)
	}
	withCookie := http.Header{"Origin": {"https://app.example.com"}, "Cookie": {"herald_token=" + tok}}
	code, h, out = g.clientCall("POST", "/api/client/publish", `{"channel":"news","data":2}`, withCookie)
	if code != http.StatusOK || h.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Errorf("publish with the cookie from the allowed origin: HTTP %d %v %v", code, out, h)
	}

	// The rate: MessageRate per address, as for a connection's frames.
	g = newTestGateway(t, gateway.Config{Limits: gateway.Limits{MessageRate: 1, MessageBurst: 2}}, nil)
	bearer = nil
	got429 := false
	for i := 0; i < 5 && !got429; i++ {
		code, h, _ := g.clientCall("POST", "/api/client/publish", `{"channel":"news","data":3}`, bearer)
		got429 = code == http.StatusTooManyRequests && h.Get("Retry-After") != ""
	}
	if !got429 {
		t.Error("no 429 past the rate")
	}
}

func TestClientPresenceOverHTTP(t *testing.T) {
	g := presenceGateway(t, 50*time.Millisecond)
	ws := g.dial("user=bob&channels=room")
	ws.expect("welcome")
	gwtest.WaitFor(t, "bob on room", func() bool {
		code, _, out := g.clientCall("POST", "/api/client/presence", `{"channel":"room"}`, nil)
		return code == http.StatusOK && out["op"] == "presence" && strings.Contains(strings.Join(users(out), ","), "bob")
	})
	if code, _, out := g.clientCall("POST", "/api/client/presence", `{"channel":"lobby"}`, nil); code != http.StatusForbidden {
		t.Errorf("presence of a channel without it: HTTP %d %v, want 403", code, out)
	}
	// presence=1 on a stream: the channel's join events.
	s := g.sseDial("user=carol&channels=room&presence=1", nil)
	s.expect("welcome")
	ws2 := g.dial("user=dave&channels=room")
	ws2.expect("welcome")
	for {
		e := s.next()
		if e.name == "join" {
			if !strings.Contains(e.data, "dave") && !strings.Contains(e.data, "carol") {
				t.Errorf("join event %s", e.data)
			}
			break
		}
	}
}
