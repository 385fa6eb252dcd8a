package gateway_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
)

var testSecret = []byte("a-test-secret-of-at-least-32-bytes!!")

// Test keys, made once: an RSA key takes a while to generate under the race detector.
var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	rsaKey2  *rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
)

func testKeys(t *testing.T) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
	})
}

// claims is a token's claims for tests; exp is set from ttl when not given.
type claims map[string]any

// sign makes a token with method and key, for sub, valid for ttl from now, with extra
// claims (which win).
func sign(t *testing.T, method jwt.SigningMethod, key any, sub string, ttl time.Duration, extra claims) string {
	t.Helper()
	c := jwt.MapClaims{"sub": sub, "exp": time.Now().Add(ttl).Unix(), "iat": time.Now().Unix()}
	kid := ""
	for k, v := range extra {
		if k == "kid" {
			kid = v.(string)
			continue
		}
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hs(t *testing.T, sub string, ttl time.Duration, extra claims) string {
	return sign(t, jwt.SigningMethodHS256, testSecret, sub, ttl, extra)
}

// dialHeader dials with extra request headers; the response is returned on failure.
func (g *testGateway) dialHeader(query string, h http.Header) (*client, *http.Response, error) {
	u := "ws" + strings.TrimPrefix(g.http.URL, "http") + "/ws?" + query
	d := websocket.Dialer{Subprotocols: []string{gateway.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(u, h)
	if err != nil {
		return nil, resp, err
	}
	g.t.Cleanup(func() { ws.Close() })
	return &client{t: g.t, ws: ws}, resp, nil
}

func status(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}

func pemOf(t *testing.T, pub any) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func TestTokensAtHandshake(t *testing.T) {
	testKeys(t)
	rsaPEM := pemOf(t, &rsaKey.PublicKey)
	rsaPub, err := gateway.ParsePublicKeyPEM(rsaPEM)
	if err != nil {
		t.Fatal(err)
	}
	ecPub, err := gateway.ParsePublicKeyPEM(pemOf(t, &ecKey.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	hsGW := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret, Leeway: -1,
		Audience: "herald", Issuer: "https://issuer.test"}}, nil)
	rsGW := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{PublicKey: rsaPub, Leeway: -1}}, nil)
	esGW := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{PublicKey: ecPub, Leeway: -1}}, nil)
	good := claims{"aud": "herald", "iss": "https://issuer.test"}
	with := func(c claims) claims {
		out := claims{}
		for k, v := range good {
			out[k] = v
		}
		for k, v := range c {
			out[k] = v
		}
		return out
	}
	noneToken := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "mallory", "exp": time.Now().Add(time.Hour).Unix(),
			"aud": "herald", "iss": "https://issuer.test"})
		s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	tests := []struct {
		name   string
		gw     *testGateway
		token  string
		header bool // send as Authorization: Bearer
		status int  // 0: upgraded
		user   string
		reason string // herald_handshakes_refused_total reason
	}{
		{"HS256 valid", hsGW, hs(t, "alice", time.Hour, good), false, 0, "alice", ""},
		{"HS256 in Authorization header", hsGW, hs(t, "bob", time.Hour, good), true, 0, "bob", ""},
		{"no token", hsGW, "", false, http.StatusUnauthorized, "", "token_missing"},
		{"garbage", hsGW, "not.a.jwt", false, http.StatusUnauthorized, "", "token_invalid"},
		{"expired", hsGW, hs(t, "alice", -time.Minute, good), false, http.StatusUnauthorized, "", "token_expired"},
		{"not yet valid", hsGW, hs(t, "alice", time.Hour, with(claims{"nbf": time.Now().Add(time.Hour).Unix()})), false, http.StatusUnauthorized, "", "token_not_yet_valid"},
		{"no exp", hsGW, hs(t, "alice", 0, with(claims{"exp": nil})), false, http.StatusUnauthorized, "", "token_invalid"},
		{"no sub", hsGW, hs(t, "", time.Hour, good), false, http.StatusUnauthorized, "", "token_invalid"},
		{"alg none", hsGW, noneToken(), false, http.StatusUnauthorized, "", "token_invalid"},
		{"wrong secret", hsGW, sign(t, jwt.SigningMethodHS256, []byte("another-secret-of-at-least-32-bytes!"), "alice", time.Hour, good), false, http.StatusUnauthorized, "", "token_invalid"},
		{"HS384 on an HS256 gateway", hsGW, sign(t, jwt.SigningMethodHS384, testSecret, "alice", time.Hour, good), false, http.StatusUnauthorized, "", "token_invalid"},
		{"wrong audience", hsGW, hs(t, "alice", time.Hour, with(claims{"aud": "other"})), false, http.StatusUnauthorized, "", "token_invalid"},
		{"no audience", hsGW, hs(t, "alice", time.Hour, with(claims{"aud": nil})), false, http.StatusUnauthorized, "", "token_invalid"},
		{"wrong issuer", hsGW, hs(t, "alice", time.Hour, with(claims{"iss": "https://evil.test"})), false, http.StatusUnauthorized, "", "token_invalid"},
		{"channels claim of the wrong type", hsGW, hs(t, "alice", time.Hour, with(claims{"channels": "news"})), false, http.StatusUnauthorized, "", "token_invalid"},

		{"RS256 valid", rsGW, sign(t, jwt.SigningMethodRS256, rsaKey, "carol", time.Hour, nil), false, 0, "carol", ""},
		{"RS256 signed with another key", rsGW, sign(t, jwt.SigningMethodRS256, rsaKey2, "carol", time.Hour, nil), false, http.StatusUnauthorized, "", "token_invalid"},
		// HS/RS confusion: an HS256 token whose secret is the gateway's public key.
		{"HS256 with the RSA public key as secret", rsGW, sign(t, jwt.SigningMethodHS256, rsaPEM, "mallory", time.Hour, nil), false, http.StatusUnauthorized, "", "token_invalid"},
		{"alg none on RS256", rsGW, noneToken(), false, http.StatusUnauthorized, "", "token_invalid"},
		{"ES256 token on an RS256 gateway", rsGW, sign(t, jwt.SigningMethodES256, ecKey, "carol", time.Hour, nil), false, http.StatusUnauthorized, "", "token_invalid"},

		{"ES256 valid", esGW, sign(t, jwt.SigningMethodES256, ecKey, "dave", time.Hour, nil), false, 0, "dave", ""},
		{"RS256 token on an ES256 gateway", esGW, sign(t, jwt.SigningMethodRS256, rsaKey, "dave", time.Hour, nil), false, http.StatusUnauthorized, "", "token_invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := gwtest.CounterWith(t, tt.gw.reg, "herald_handshakes_refused_total", "reason", tt.reason)
			q, h := "", http.Header{}
			if tt.token != "" && tt.header {
				h.Set("Authorization", "Bearer "+tt.token)
			} else if tt.token != "" {
				q = "token=" + url.QueryEscape(tt.token)
			}
			c, resp, err := tt.gw.dialHeader(q, h)
			if tt.status != 0 {
				if err == nil || status(resp) != tt.status {
					t.Fatalf("got HTTP %d (%v), want %d", status(resp), err, tt.status)
				}
				if got := gwtest.CounterWith(t, tt.gw.reg, "herald_handshakes_refused_total", "reason", tt.reason); got != before+1 {
					t.Errorf("refused{reason=%s}: got %v, want %v", tt.reason, got, before+1)
				}
				if resp.Header.Get("WWW-Authenticate") == "" {
					t.Errorf("401 without WWW-Authenticate")
				}
				return
			}
			if err != nil {
				t.Fatalf("dial: %v (HTTP %d)", err, status(resp))
			}
			if w := c.expect("welcome"); w.str("user") != tt.user {
				t.Errorf("got user %q, want %q", w.str("user"), tt.user)
			}
		})
	}
}

func TestAnonymousAccess(t *testing.T) {
	// No key configured: everyone is anonymous, with every permission (the demo).
	open := newTestGateway(t, gateway.Config{}, nil)
	c := open.dial("channels=anything&token=ignored")
	if w := c.expect("welcome"); w.str("user") != "" {
		t.Errorf("got user %q, want anonymous", w.str("user"))
	}
	c.send(`{"op":"publish","data":1,"ref":"p"}`)
	if f := c.next(); f.str("op") != "ack" && f.str("op") != "message" {
		t.Errorf("got %v, want the publish accepted", f)
	}

	// A key configured and anonymous allowed: the default permissions.
	g := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret, AllowAnonymous: true,
		DefaultChannels: []string{"public:*"}}}, nil)
	a := g.dial("channels=public:news")
	if w := a.expect("welcome"); w.str("user") != "" {
		t.Errorf("got user %q, want anonymous", w.str("user"))
	}
	a.send(`{"op":"subscribe","channel":"private","ref":"s"}`)
	if f := a.expect("error"); f.str("code") != gateway.CodeForbidden {
		t.Errorf("got %v, want forbidden", f)
	}
	a.send(`{"op":"publish","channel":"public:news","data":1,"ref":"p"}`)
	if f := a.expect("error"); f.str("code") != gateway.CodeForbidden || f.str("ref") != "p" {
		t.Errorf("got %v, want forbidden (anonymous clients may not publish by default)", f)
	}
	if _, resp, err := g.tryDial("channels=private"); err == nil || status(resp) != http.StatusForbidden {
		t.Errorf("anonymous connect to a forbidden channel: got HTTP %d, want 403", status(resp))
	}
	// A bad token is refused even where anonymous access is allowed.
	if _, resp, err := g.tryDial("token=bad"); err == nil || status(resp) != http.StatusUnauthorized {
		t.Errorf("bad token with anonymous allowed: got HTTP %d, want 401", status(resp))
	}
}

func TestInsecureUserParamRefusedWithAuth(t *testing.T) {
	hub := gateway.NewHub(gateway.HubConfig{})
	_, err := gateway.NewServer(gateway.Config{InsecureUserParam: true, Auth: gateway.AuthConfig{Secret: testSecret}},
		hub, failingBus{}, failingBus{})
	if err == nil {
		t.Fatal("NewServer took InsecureUserParam with a JWT secret; want an error")
	}
}

func TestPermissionsFromClaims(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret}}, nil)
	alice := hs(t, "alice", time.Hour, claims{
		"channels": []string{"news", "user:{sub}:*", "room:*"},
		"publish":  []string{"room:*"},
	})
	bob := hs(t, "bob", time.Hour, claims{"channels": []string{"room:*"}, "publish": []string{"*"}})
	carol := hs(t, "carol", time.Hour, nil) // no claims: subscribe and publish nowhere (the defaults)
	// A sub that tries to widen a pattern by holding a wildcard is refused.
	star := hs(t, "*", time.Hour, claims{"channels": []string{"user:{sub}"}})

	tests := []struct {
		name, token, query string
		status             int
	}{
		{"permitted exact", alice, "channels=news", 0},
		{"permitted by {sub}", alice, "channels=user:alice:inbox", 0},
		{"another user's channel", alice, "channels=user:bob:inbox", http.StatusForbidden},
		{"not listed", alice, "channels=news,sport", http.StatusForbidden},
		{"prefix is not the channel", alice, "channels=room", http.StatusForbidden},
		{"no claim: no channel by default", carol, "channels=anything", http.StatusForbidden},
		{"no claim: not even its own", carol, "channels=user:carol:inbox", http.StatusForbidden},
		{"a sub of * in {sub} is refused", star, "channels=user:x", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, resp, err := g.tryDial(tt.query + "&token=" + tt.token)
			if tt.status == 0 {
				if err != nil {
					t.Fatalf("got %v (HTTP %d), want upgraded", err, status(resp))
				}
				c.expect("welcome")
				return
			}
			if err == nil || status(resp) != tt.status {
				t.Fatalf("got HTTP %d, want %d", status(resp), tt.status)
			}
		})
	}

	a := g.dial("token=" + alice)
	a.expect("welcome")
	b := g.dial("token=" + bob)
	b.expect("welcome")
	c := g.dial("token=" + carol)
	c.expect("welcome")
	ops := []struct {
		who   *client
		frame string
		want  string // op, or error code
	}{
		{a, `{"op":"subscribe","channel":"room:1","ref":"1"}`, "subscribed"},
		{a, `{"op":"subscribe","channel":"user:alice:x","ref":"2"}`, "subscribed"},
		{a, `{"op":"subscribe","channel":"user:bob:x","ref":"3"}`, gateway.CodeForbidden},
		{a, `{"op":"subscribe","channel":"sport","since":-1,"ref":"4"}`, gateway.CodeForbidden},
		{a, `{"op":"unsubscribe","channel":"sport","ref":"5"}`, "unsubscribed"},
		{a, `{"op":"publish","channel":"news","data":1,"ref":"6"}`, gateway.CodeForbidden},
		{a, `{"op":"publish","data":1,"ref":"7"}`, gateway.CodeForbidden},
		{b, `{"op":"subscribe","channel":"news","ref":"8"}`, gateway.CodeForbidden},
		{c, `{"op":"subscribe","channel":"room:1","ref":"8c"}`, gateway.CodeForbidden},
		{c, `{"op":"publish","channel":"room:1","data":1,"ref":"9"}`, gateway.CodeForbidden},
		{b, `{"op":"subscribe","channel":"room:1","ref":"10"}`, "subscribed"},
	}
	for _, op := range ops {
		op.who.send(op.frame)
		f := op.who.next()
		got := f.str("op")
		if got == "error" {
			got = f.str("code")
		}
		if got != op.want {
			t.Errorf("%s: got %v, want %s", op.frame, f, op.want)
		}
	}
	// Permitted publishes: alice to room:1, bob to everyone.
	a.send(`{"op":"publish","channel":"room:1","data":"from alice","ref":"p1"}`)
	b.send(`{"op":"publish","data":"from bob to all","ref":"p2"}`)
	for _, who := range []*client{a, b} {
		seen := map[string]bool{}
		for len(seen) < 2 { // both messages reach both (bob's goes to all)
			f := who.next()
			if f.str("op") == "message" {
				seen[f["data"].(string)] = true
			}
		}
	}

	// Messages for a user reach only that user's connections.
	if status, body := g.publish(testKey, `{"users":["alice"],"data":"for alice"}`); status != http.StatusAccepted {
		t.Fatalf("publish: got %d %v", status, body)
	}
	for f := a.next(); ; f = a.next() {
		if f.str("op") == "message" && f["data"] == "for alice" {
			break
		}
	}
	for _, who := range []*client{b, c} {
		for _, f := range who.drain(200 * time.Millisecond) {
			if f["data"] == "for alice" {
				t.Errorf("another user got alice's message: %v", f)
			}
		}
	}
}

// drain returns every frame that arrives until none has for d.
func (c *client) drain(d time.Duration) []frame {
	c.t.Helper()
	var got []frame
	for {
		_ = c.ws.SetReadDeadline(time.Now().Add(d))
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			return got
		}
		var f frame
		_ = json.Unmarshal(data, &f)
		got = append(got, f)
	}
}

func TestTokenExpiryAndRefresh(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret, Leeway: -1}}, nil)
	perms := claims{"channels": []string{"a", "b"}}

	// Not refreshed: closed with 1008 when the token expires.
	c := g.dial("token=" + hs(t, "alice", 2*time.Second, perms))
	c.expect("welcome")
	start := time.Now()
	if code := c.closeCode(); code != websocket.ClosePolicyViolation {
		t.Fatalf("got close %d, want 1008", code)
	}
	if d := time.Since(start); d < time.Second || d > 5*time.Second {
		t.Errorf("closed after %v, want about 2s", d)
	}
	if n := gwtest.Counter(t, g.reg, "herald_tokens_expired_total"); n != 1 {
		t.Errorf("tokens expired: got %v, want 1", n)
	}

	// Refreshed before expiry: stays open past the first token's exp; the new
	// permissions apply, and a subscription they no longer allow is dropped.
	r := g.dial("token=" + hs(t, "alice", 2*time.Second, perms) + "&channels=a,b")
	r.expect("welcome")
	refreshed := func(tok, ref string) frame {
		r.send(map[string]string{"op": "refresh", "token": tok, "ref": ref})
		return r.next()
	}
	// Refused: another user's token, an expired one, a bad one. The connection stays.
	for i, tok := range []string{
		hs(t, "bob", time.Hour, perms),
		hs(t, "alice", -time.Minute, perms),
		"garbage",
		sign(t, jwt.SigningMethodHS256, []byte("another-secret-of-at-least-32-bytes!"), "alice", time.Hour, perms),
	} {
		ref := string(rune('w' + i))
		if f := refreshed(tok, ref); f.str("op") != "error" || f.str("code") != gateway.CodeForbidden || f.str("ref") != ref {
			t.Errorf("refresh %d: got %v, want error forbidden with ref %s", i, f, ref)
		}
	}
	fresh := time.Now().Add(time.Hour).Unix()
	f := refreshed(hs(t, "alice", time.Hour, claims{"channels": []string{"a"}}), "r1")
	if f.str("op") == "unsubscribed" { // the dropped subscription may be told first
		if f.str("channel") != "b" || f.str("ref") != "" {
			t.Errorf("got %v, want unsubscribed b without ref", f)
		}
		f = r.next()
	} else {
		if u := r.expect("unsubscribed"); u.str("channel") != "b" {
			t.Errorf("got %v, want unsubscribed b", u)
		}
	}
	if exp, _ := f.num("exp"); f.str("op") != "refreshed" || f.str("ref") != "r1" || exp < fresh-5 || exp > fresh+5 {
		t.Fatalf("got %v, want refreshed with ref r1 and exp about %d", f, fresh)
	}
	time.Sleep(2500 * time.Millisecond) // past the first token's exp
	r.send(`{"op":"subscribe","channel":"b","ref":"s"}`)
	if f := r.expect("error"); f.str("code") != gateway.CodeForbidden {
		t.Errorf("got %v, want forbidden under the new token", f)
	}
	g.publish(testKey, `{"channel":"a","data":"still here"}`)
	if f := r.expect("message"); f["data"] != "still here" {
		t.Errorf("got %v, want the message on a", f)
	}
	if got := gwtest.CounterWith(t, g.reg, "herald_token_refreshes_total", "result", "ok"); got != 1 {
		t.Errorf("refreshes ok: got %v, want 1", got)
	}

	// A refresh after the token expired is too late: the connection is already closed.
	late := g.dial("token=" + hs(t, "alice", time.Second, perms))
	late.expect("welcome")
	time.Sleep(1500 * time.Millisecond)
	_ = late.ws.WriteJSON(map[string]string{"op": "refresh", "token": hs(t, "alice", time.Hour, perms), "ref": "late"})
	if code := late.closeCode(); code != websocket.ClosePolicyViolation {
		t.Errorf("late refresh: got close %d, want 1008", code)
	}
}

func TestRefreshWithoutAuth(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	c := g.dial("")
	c.expect("welcome")
	c.send(`{"op":"refresh","token":"whatever","ref":"r"}`)
	if f := c.expect("refreshed"); f.str("ref") != "r" {
		t.Errorf("got %v, want refreshed with ref r", f)
	}
	c.send(`{"op":"refresh","ref":"r2"}`)
	if f := c.expect("error"); f.str("code") != gateway.CodeBadRequest || f.str("ref") != "r2" {
		t.Errorf("got %v, want bad_request (no token)", f)
	}
}

// jwksServer serves a JWKS of keys; set replaces them. It counts requests.
type jwksServer struct {
	*httptest.Server
	mu    sync.Mutex
	doc   []byte
	count atomic.Int32
}

func newJWKSServer(t *testing.T) *jwksServer {
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.count.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(s.doc)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(keys map[string]any) {
	var list []map[string]string
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	for kid, k := range keys {
		switch k := k.(type) {
		case *rsa.PublicKey:
			list = append(list, map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
				"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())})
		case *ecdsa.PublicKey:
			pt, _ := k.Bytes() // 0x04 || x || y
			list = append(list, map[string]string{"kty": "EC", "kid": kid, "crv": "P-256",
				"x": b64(pt[1:33]), "y": b64(pt[33:])})
		}
	}
	list = append(list, map[string]string{"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0"}) // skipped
	doc, _ := json.Marshal(map[string]any{"keys": list})
	s.mu.Lock()
	s.doc = doc
	s.mu.Unlock()
}

func TestJWKS(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t)
	srv.set(map[string]any{"k1": &rsaKey.PublicKey})
	jwks := gateway.NewJWKS(gateway.JWKSConfig{URL: srv.URL, AllowHTTP: true, MissInterval: 50 * time.Millisecond, Logger: gwtest.Logger(t)})
	if err := jwks.Fetch(t.Context()); err != nil {
		t.Fatal(err)
	}
	g := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{JWKS: jwks}}, nil)
	dial := func(tok string) int {
		c, resp, err := g.tryDial("token=" + tok)
		if err != nil {
			return status(resp)
		}
		c.expect("welcome")
		return 0
	}
	if s := dial(sign(t, jwt.SigningMethodRS256, rsaKey, "alice", time.Hour, claims{"kid": "k1"})); s != 0 {
		t.Errorf("kid k1: got HTTP %d, want upgraded", s)
	}
	if s := dial(sign(t, jwt.SigningMethodRS256, rsaKey, "alice", time.Hour, nil)); s != 0 {
		t.Errorf("no kid, one RS256 key: got HTTP %d, want upgraded", s)
	}
	if s := dial(sign(t, jwt.SigningMethodRS256, rsaKey2, "alice", time.Hour, claims{"kid": "k1"})); s != http.StatusUnauthorized {
		t.Errorf("kid k1 signed by another key: got HTTP %d, want 401", s)
	}
	// The issuer rotates to k2: a token with the new kid makes the gateway fetch again.
	srv.set(map[string]any{"k1": &rsaKey.PublicKey, "k2": &rsaKey2.PublicKey, "e1": &ecKey.PublicKey})
	time.Sleep(60 * time.Millisecond)
	if s := dial(sign(t, jwt.SigningMethodRS256, rsaKey2, "alice", time.Hour, claims{"kid": "k2"})); s != 0 {
		t.Errorf("rotated kid k2: got HTTP %d, want upgraded", s)
	}
	// An EC key in the set does not verify on an RS256 gateway, nor a made-up kid.
	if s := dial(sign(t, jwt.SigningMethodES256, ecKey, "alice", time.Hour, claims{"kid": "e1"})); s != http.StatusUnauthorized {
		t.Errorf("ES256 token on an RS256 JWKS gateway: got HTTP %d, want 401", s)
	}
	// Made-up kids do not make the gateway fetch on every handshake.
	before := srv.count.Load()
	for i := 0; i < 20; i++ {
		if s := dial(sign(t, jwt.SigningMethodRS256, rsaKey, "alice", time.Hour, claims{"kid": "nope"})); s != http.StatusUnauthorized {
			t.Fatalf("unknown kid: got HTTP %d, want 401", s)
		}
	}
	if n := srv.count.Load() - before; n > 3 {
		t.Errorf("20 unknown kids made %d fetches, want at most a few", n)
	}
}

// TestJWKSRedirects: the key set is fetched only from the scheme and host of its URL: a
// redirect on the same host is followed, one to another host or scheme is refused.
func TestJWKSRedirects(t *testing.T) {
	testKeys(t)
	keys := newJWKSServer(t) // another host: 127.0.0.1 on another port
	keys.set(map[string]any{"k1": &rsaKey.PublicKey})
	var own *jwksServer
	own = newJWKSServer(t)
	own.set(map[string]any{"k1": &rsaKey.PublicKey})
	redirector := func(to func(r *http.Request) string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, to(r), http.StatusFound)
		}))
		t.Cleanup(s.Close)
		return s
	}
	toKeys := redirector(func(*http.Request) string { return keys.URL + "/jwks.json" })
	loop := redirector(func(r *http.Request) string { return "/again" + r.URL.Path })
	sameHost := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/old" {
			http.Redirect(w, r, "/jwks.json", http.StatusMovedPermanently)
			return
		}
		own.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(sameHost.Close)
	tlsToHTTP := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, keys.URL+"/jwks.json", http.StatusFound)
	}))
	t.Cleanup(tlsToHTTP.Close)

	tests := []struct {
		name   string
		url    string
		client *http.Client
		want   string // "" for a good fetch, else part of the error
	}{
		{"same host", sameHost.URL + "/old", nil, ""},
		{"another host", toKeys.URL + "/jwks.json", nil, "refused a redirect"},
		{"https to http", tlsToHTTP.URL + "/jwks.json", tlsToHTTP.Client(), "refused a redirect"},
		{"a loop on the same host", loop.URL + "/jwks.json", nil, "stopped after 10 redirects"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := keys.count.Load()
			j := gateway.NewJWKS(gateway.JWKSConfig{URL: tt.url, AllowHTTP: true, Client: tt.client, Logger: gwtest.Logger(t)})
			err := j.Fetch(t.Context())
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Fetch: %v, want the keys", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Fetch: got %v, want an error containing %q", err, tt.want)
			}
			if n := keys.count.Load() - before; n != 0 {
				t.Errorf("the other host got %d requests, want none", n)
			}
		})
	}
	// The caller's client is not changed.
	c := tlsToHTTP.Client()
	gateway.NewJWKS(gateway.JWKSConfig{URL: tlsToHTTP.URL, Client: c})
	if c.CheckRedirect != nil {
		t.Error("NewJWKS changed the caller's client")
	}
}

// TestJWKSPlainHTTPAndSecrets: a plain http:// URL is refused unless allowed; the URL's
// password and secret query parameters never reach an error or a log line.
func TestJWKSPlainHTTPAndSecrets(t *testing.T) {
	testKeys(t)
	keys := newJWKSServer(t)
	keys.set(map[string]any{"k1": &rsaKey.PublicKey})
	if err := gateway.NewJWKS(gateway.JWKSConfig{URL: keys.URL}).Fetch(t.Context()); err == nil || !strings.Contains(err.Error(), "plain http") {
		t.Errorf("http URL, not allowed: got %v, want it refused as plain http", err)
	}
	if err := gateway.NewJWKS(gateway.JWKSConfig{URL: keys.URL, AllowHTTP: true}).Fetch(t.Context()); err != nil {
		t.Errorf("http URL, allowed: %v", err)
	}
	for _, u := range []string{"ftp://x/jwks", "https:///jwks", "/jwks"} {
		if err := gateway.CheckJWKSURL(u, true); err == nil {
			t.Errorf("CheckJWKSURL(%q): got nil, want an error", u)
		}
	}

	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down", http.StatusInternalServerError)
	}))
	t.Cleanup(failing.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close() // nothing listens there now: the client's error quotes the URL
	for _, base := range []string{failing.URL, closed.URL} {
		secretURL := strings.Replace(base, "http://", "http://ops:hunter2@", 1) + "/jwks?tenant=t1&access_token=tok-123"
		var logs strings.Builder
		var mu sync.Mutex
		log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return logs.Write(p)
		}), nil))
		j := gateway.NewJWKS(gateway.JWKSConfig{URL: secretURL, AllowHTTP: true, Logger: log, Refresh: time.Hour})
		err := j.Fetch(t.Context())
		if err == nil {
			t.Fatalf("Fetch from %s: got nil, want an error", base)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { j.Run(ctx); close(done) }()
		gwtest.WaitFor(t, "the failed fetch logged", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return strings.Contains(logs.String(), "JWKS fetch failed")
		})
		cancel()
		<-done
		mu.Lock()
		out := err.Error() + "\n" + logs.String()
		mu.Unlock()
		for _, secret := range []string{"hunter2", "tok-123"} {
			if strings.Contains(out, secret) {
				t.Errorf("the error or log shows %q:\n%s", secret, out)
			}
		}
		if !strings.Contains(out, "tenant=t1") || !strings.Contains(out, "ops:xxxxx@") {
			t.Errorf("the error or log lost where it fetched from:\n%s", out)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestOrigins(t *testing.T) {
	g := newTestGateway(t, gateway.Config{AllowedOrigins: []string{"https://app.example.com", "https://*.example.org"}}, nil)
	host := strings.TrimPrefix(g.http.URL, "http://")
	tests := []struct {
		origin string
		ok     bool
	}{
		{"", true}, // not a browser
		{"http://" + host, true},
		{"https://" + host, true}, // same host
		{"https://app.example.com", true},
		{"HTTPS://APP.EXAMPLE.COM", true},
		{"http://app.example.com", false}, // another scheme
		{"https://app.example.com:8443", false},
		{"https://evil.com", false},
		{"https://app.example.com.evil.com", false},
		{"https://a.example.org", true},
		{"https://a.b.example.org", true},
		{"https://example.org", false},
		{"https://evilexample.org", false},
		{"null", false},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.origin != "" {
			h.Set("Origin", tt.origin)
		}
		c, resp, err := g.dialHeader("", h)
		if tt.ok {
			if err != nil {
				t.Errorf("origin %q: got %v (HTTP %d), want upgraded", tt.origin, err, status(resp))
				continue
			}
			c.expect("welcome")
		} else if err == nil || status(resp) != http.StatusForbidden {
			t.Errorf("origin %q: got HTTP %d, want 403", tt.origin, status(resp))
		}
	}
	if got := gwtest.CounterWith(t, g.reg, "herald_handshakes_refused_total", "reason", "origin"); got != 7 {
		t.Errorf("refused{reason=origin}: got %v, want 7", got)
	}
	if _, err := gateway.NewServer(gateway.Config{AllowedOrigins: []string{"https://*"}}, gateway.NewHub(gateway.HubConfig{}), failingBus{}, failingBus{}); err == nil {
		t.Error("NewServer took the allowed origin https://*; want an error")
	}
}

// TestDefaultPermissionsAreNone: with authentication on and no --default-channels, a
// token without a channels claim, and an anonymous client, may subscribe to nothing and
// ask who is on no channel (presence follows subscribe permissions).
func TestDefaultPermissionsAreNone(t *testing.T) {
	p := gateway.NewPresence(gateway.PresenceConfig{Node: "test-node", Channels: []string{"*"}, Logger: gwtest.Logger(t)})
	g := newTestGateway(t, gateway.Config{Presence: p,
		Auth: gateway.AuthConfig{Secret: testSecret, AllowAnonymous: true}}, nil)
	noClaims := g.dial("token=" + hs(t, "carol", time.Hour, nil))
	noClaims.expect("welcome")
	anon := g.dial("")
	anon.expect("welcome")
	room := g.dial("token=" + hs(t, "dave", time.Hour, claims{"channels": []string{"room"}}))
	room.expect("welcome")
	for _, tt := range []struct {
		name  string
		who   *client
		frame string
		want  string // op, or error code
	}{
		{"no claims: subscribe", noClaims, `{"op":"subscribe","channel":"news","ref":"1"}`, gateway.CodeForbidden},
		{"no claims: subscribe to its own", noClaims, `{"op":"subscribe","channel":"user:carol:inbox","ref":"2"}`, gateway.CodeForbidden},
		{"no claims: presence", noClaims, `{"op":"presence","channel":"room","ref":"3"}`, gateway.CodeForbidden},
		{"no claims: subscribe with presence", noClaims, `{"op":"subscribe","channel":"room","presence":true,"ref":"4"}`, gateway.CodeForbidden},
		{"anonymous: subscribe", anon, `{"op":"subscribe","channel":"news","ref":"5"}`, gateway.CodeForbidden},
		{"anonymous: presence", anon, `{"op":"presence","channel":"room","ref":"6"}`, gateway.CodeForbidden},
		{"room: presence of room", room, `{"op":"presence","channel":"room","ref":"7"}`, "presence"},
		{"room: presence of another channel", room, `{"op":"presence","channel":"lobby","ref":"8"}`, gateway.CodeForbidden},
	} {
		tt.who.send(tt.frame)
		f := tt.who.next()
		got := f.str("op")
		if got == "error" {
			got = f.str("code")
		}
		if got != tt.want {
			t.Errorf("%s: %s: got %v, want %s", tt.name, tt.frame, f, tt.want)
		}
	}
	for _, q := range []string{"channels=news&token=" + hs(t, "carol", time.Hour, nil), "channels=news"} {
		if _, resp, err := g.tryDial(q); err == nil || status(resp) != http.StatusForbidden {
			t.Errorf("connect with %.30s: got HTTP %d, want 403", q, status(resp))
		}
	}
}

// TestSubCannotWidenPatterns: "{sub}" names only the user's own channels. A sub that
// holds a separator or a pattern character is refused where a permission uses {sub}
// (else alice:inbox, in user:{sub}:*, would reach user:alice:inbox:*, a part of alice's
// channels); a pattern where {sub} is not followed by a separator before the * is
// refused; an anonymous client gets nothing from a {sub} pattern.
func TestSubCannotWidenPatterns(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret, AllowAnonymous: true,
		DefaultChannels: []string{"user:{sub}:*", "public:*"}}}, nil)
	own := claims{"channels": []string{"user:{sub}:*"}}
	tests := []struct {
		name, sub string
		extra     claims
		channel   string
		status    int // 0: upgraded
	}{
		{"plain sub, its own channel", "alice", own, "user:alice:inbox", 0},
		{"sub with ':' reaching alice's channels", "alice:inbox", own, "user:alice:inbox:x", http.StatusUnauthorized},
		{"sub with ':' reaching alice's channels, by the default", "alice:inbox", nil, "user:alice:inbox:x", http.StatusUnauthorized},
		{"sub with '/'", "alice/x", own, "user:alice/x:y", http.StatusUnauthorized},
		{"sub with '.'", "alice.x", own, "user:alice.x:y", http.StatusUnauthorized},
		{"sub with '*'", "a*", own, "user:a:y", http.StatusUnauthorized},
		{"sub with braces", "{sub}", own, "user:x:y", http.StatusUnauthorized},
		{"sub with '@'", "alice@example.com", own, "public:x", http.StatusUnauthorized},
		{"sub longer than a channel", strings.Repeat("a", 129), own, "public:x", http.StatusUnauthorized},
		{"sub with ':' where no permission uses {sub}", "alice:inbox", claims{"channels": []string{"news"}}, "news", 0},
		{"{sub} right before *", "alice", claims{"channels": []string{"user:{sub}*"}}, "user:alice2", http.StatusUnauthorized},
		{"{sub} before a letter and *", "alice", claims{"channels": []string{"user:{sub}x*"}}, "user:alicexx", http.StatusUnauthorized},
		{"{sub} exact, without *", "alice", claims{"channels": []string{"inbox:{sub}"}}, "inbox:alice", 0},
		{"braces that are not {sub}", "alice", claims{"channels": []string{"user:{user}:*"}}, "public:x", http.StatusUnauthorized},
		{"{sub} in the publish claim", "bob:x", claims{"channels": []string{"news"}, "publish": []string{"user:{sub}:*"}}, "news", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, resp, err := g.tryDial("channels=" + url.QueryEscape(tt.channel) + "&token=" + hs(t, tt.sub, time.Hour, tt.extra))
			if tt.status == 0 {
				if err != nil {
					t.Fatalf("got %v (HTTP %d), want upgraded", err, status(resp))
				}
				c.expect("welcome")
				return
			}
			if err == nil || status(resp) != tt.status {
				t.Fatalf("got HTTP %d, want %d", status(resp), tt.status)
			}
		})
	}

	// A plain sub cannot reach another user's channels, nor alice's through a prefix.
	a := g.dial("token=" + hs(t, "alice", time.Hour, own))
	a.expect("welcome")
	for ch, want := range map[string]string{"user:alice:inbox": "subscribed", "user:alice2:inbox": gateway.CodeForbidden,
		"user:bob:inbox": gateway.CodeForbidden, "user:alice": gateway.CodeForbidden} {
		a.send(map[string]string{"op": "subscribe", "channel": ch, "ref": ch})
		f := a.next()
		if got := f.str("op"); got != want && f.str("code") != want {
			t.Errorf("alice subscribes to %s: got %v, want %s", ch, f, want)
		}
	}

	// A refresh that would bring {sub} to an unsafe sub is refused; the connection stays.
	r := g.dial("token=" + hs(t, "alice:inbox", time.Hour, claims{"channels": []string{"news"}}) + "&channels=news")
	r.expect("welcome")
	r.send(map[string]string{"op": "refresh", "token": hs(t, "alice:inbox", time.Hour, own), "ref": "r"})
	if f := r.expect("error"); f.str("code") != gateway.CodeForbidden || f.str("ref") != "r" || !strings.Contains(f.str("message"), "{sub}") {
		t.Errorf("refresh to user:{sub}:* for sub alice:inbox: got %v, want error forbidden naming {sub}", f)
	}
	r.send(`{"op":"subscribe","channel":"user:alice:inbox:x","ref":"s"}`)
	if f := r.expect("error"); f.str("code") != gateway.CodeForbidden {
		t.Errorf("after the refused refresh: got %v, want forbidden", f)
	}

	// Anonymous: the {sub} pattern gives nothing (not user::*); the others apply.
	anon := g.dial("")
	anon.expect("welcome")
	for ch, want := range map[string]string{"user::x": gateway.CodeForbidden, "public:x": "subscribed"} {
		anon.send(map[string]string{"op": "subscribe", "channel": ch, "ref": ch})
		f := anon.next()
		if got := f.str("op"); got != want && f.str("code") != want {
			t.Errorf("anonymous subscribes to %s: got %v, want %s", ch, f, want)
		}
	}

	// A default pattern that breaks the rules stops the server from starting.
	for _, bad := range [][]string{{"user:{sub}*"}, {"{user}:*"}, {"user:{sub"}} {
		_, err := gateway.NewServer(gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret, DefaultChannels: bad}},
			gateway.NewHub(gateway.HubConfig{}), failingBus{}, failingBus{})
		if err == nil {
			t.Errorf("NewServer took DefaultChannels %q; want an error", bad)
		}
	}
}
