package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldgw/herald/producer/amqptest"
)

func TestEdgeFlags(t *testing.T) {
	c, err := parseConfig(nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Gateway.Limits.MaxConnections != 100000 || c.Gateway.Limits.MaxConnectionsPerIP != 1000 || c.Gateway.Limits.HandshakeRate != 20 || c.Gateway.Limits.HandshakeBurst != 100 ||
		c.Gateway.Limits.MessageRate != 50 || c.Gateway.Limits.MessageBurst != 100 || c.Gateway.Limits.MaxViolations != 10 || c.Gateway.Limits.MaxSubscriptions != 256 ||
		c.Gateway.Auth.Leeway != 30*time.Second || len(c.Gateway.Auth.DefaultChannels) != 0 || len(c.Gateway.Auth.DefaultPublish) != 0 || c.Gateway.Auth.AllowAnonymous ||
		c.Listen.ReadHeaderTimeout != 10*time.Second || c.Listen.IdleTimeout != 2*time.Minute || c.Listen.MaxHeaderBytes != 16<<10 ||
		c.JWKS.Refresh != 10*time.Minute {
		t.Errorf("defaults differ from the documented ones: %+v", c)
	}
	c, err = parseConfig([]string{"--message-rate", "5"}, env(map[string]string{
		"HERALD_JWT_SECRET": strings.Repeat("s", 32), "HERALD_ALLOW_ANONYMOUS": "true", "HERALD_MESSAGE_RATE": "9",
		"HERALD_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1", "HERALD_ALLOWED_ORIGINS": "https://a.example.com",
	}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Gateway.Auth.Secret) == 0 || !c.Gateway.Auth.AllowAnonymous || c.Gateway.Limits.MessageRate != 5 ||
		len(c.Gateway.Limits.TrustedProxies) != 2 || len(c.Gateway.AllowedOrigins) != 1 {
		t.Errorf("environment or flags not applied: %+v", c)
	}

	errs := []struct {
		name string
		args []string
		want string
	}{
		{"insecure user param with a secret", []string{"--jwt-secret", strings.Repeat("s", 32), "--insecure-user-param"}, "insecure-user-param"},
		{"insecure user param with a JWKS", []string{"--jwks-url", "https://x/jwks", "--insecure-user-param"}, "insecure-user-param"},
		{"two keys", []string{"--jwt-secret", strings.Repeat("s", 32), "--jwks-url", "https://x/jwks"}, "not several"},
		{"short secret", []string{"--jwt-secret", "short"}, "32 bytes"},
		{"bad alg", []string{"--jwt-secret", strings.Repeat("s", 32), "--jwt-alg", "none"}, "jwt-alg"},
		{"anonymous without a key", []string{"--allow-anonymous"}, "needs a key"},
		{"bad proxy", []string{"--trusted-proxies", "10.0.0.0/33"}, "trusted-proxies"},
		{"negative limit", []string{"--max-connections", "-1"}, "max-connections"},
		{"zero burst", []string{"--message-burst", "0"}, "message-burst"},
		{"{sub} before *", []string{"--default-channels", "public:*,user:{sub}*"}, "default-channels"},
		{"braces that are not {sub}", []string{"--default-publish", "user:{user}"}, "default-publish"},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := parseConfig(tt.args, env(nil), &out)
			if err == nil || !strings.Contains(err.Error()+out.String(), tt.want) {
				t.Errorf("got %v, want an error naming %q", err, tt.want)
			}
		})
	}
	var help bytes.Buffer
	_, _ = parseConfig([]string{"-help"}, env(nil), &help)
	for _, name := range []string{"jwt-secret", "jwt-public-key", "jwks-url", "jwks-refresh", "jwt-alg", "jwt-audience",
		"jwt-issuer", "jwt-leeway", "allow-anonymous", "auth-cookie", "default-channels", "default-publish", "allowed-origins",
		"trusted-proxies", "max-connections", "max-connections-per-ip", "handshake-rate", "handshake-burst",
		"message-rate", "message-burst", "max-rate-violations", "max-subscriptions", "read-header-timeout",
		"idle-timeout", "max-header-bytes"} {
		if !strings.Contains(help.String(), "-"+name+" ") && !strings.Contains(help.String(), "-"+name+"\n") {
			t.Errorf("-help does not list -%s", name)
		}
	}
}

// runGateway runs the gateway in process with args and returns its base URL and its log.
func runGateway(t *testing.T, args ...string) (string, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	logs := &syncBuffer{}
	go func() {
		done <- run(ctx, append([]string{"--addr", "127.0.0.1:0", "--log-format", "json"}, args...), func(string) string { return "" }, pw)
		pw.Close()
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			logs.add(sc.Text())
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "herald gateway listening" {
				addr <- rec.Addr
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("gateway did not stop")
		}
	})
	select {
	case a := <-addr:
		return a, logs
	case code := <-done:
		t.Fatalf("gateway exited with %d: %s", code, logs)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not start")
	}
	return "", nil
}

type syncBuffer struct {
	mu    sync.Mutex
	lines []string
	n     int // bytes in lines, with a newline each
}

func (b *syncBuffer) add(s string) {
	b.mu.Lock()
	b.lines = append(b.lines, s)
	b.n += len(s) + 1
	b.mu.Unlock()
}

// bytes returns how many bytes of log the buffer has taken.
func (b *syncBuffer) bytes() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}
func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}

func TestRunWithAuthentication(t *testing.T) {
	addr, logs := runGateway(t, "--jwt-secret", strings.Repeat("k", 32))
	if strings.Contains(logs.String(), "AUTHENTICATION IS OFF") {
		t.Error("logged that authentication is off, with a secret configured")
	}
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("connect without a token: got %v, want HTTP 401", err)
	}

	open, logs := runGateway(t)
	if !strings.Contains(logs.String(), "AUTHENTICATION IS OFF") {
		t.Errorf("the demo default does not say authentication is off; log:\n%s", logs)
	}
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+open+"/ws", nil)
	if err != nil {
		t.Fatalf("anonymous connect to the demo default: %v", err)
	}
	ws.Close()
}

// TestStartupSaysWhatTokensWithoutClaimsGet: with authentication on, one log line says
// what a token without a channels or publish claim may do, and what clients without a
// token get; by default, nothing and refused.
func TestStartupSaysWhatTokensWithoutClaimsGet(t *testing.T) {
	line := func(logs *syncBuffer) string {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "tokens without a channels claim") {
				return l
			}
		}
		t.Fatalf("no log line says what tokens without claims get:\n%s", logs)
		return ""
	}
	_, logs := runGateway(t, "--jwt-secret", strings.Repeat("k", 32))
	got := line(logs)
	for _, want := range []string{"may subscribe to no channel", "may publish to no channel", "without a token are refused"} {
		if !strings.Contains(got, want) {
			t.Errorf("defaults: %s\nwant it to say %q", got, want)
		}
	}
	_, logs = runGateway(t, "--jwt-secret", strings.Repeat("k", 32), "--allow-anonymous",
		"--default-channels", "public:*,user:{sub}:*", "--default-publish", "public:chat")
	got = line(logs)
	for _, want := range []string{"may subscribe to public:*, user:{sub}:*", "may publish to public:chat", "without a token are admitted anonymously"} {
		if !strings.Contains(got, want) {
			t.Errorf("configured: %s\nwant it to say %q", got, want)
		}
	}
}

// TestHandshakeNeverCompleted: a client that opens a TCP connection and sends part of
// its request headers is dropped after --read-header-timeout.
func TestHandshakeNeverCompleted(t *testing.T) {
	addr, _ := runGateway(t, "--read-header-timeout", "300ms")
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := io.WriteString(nc, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.Copy(io.Discard, nc) // until the gateway closes
	if d := time.Since(start); err != nil || d < 200*time.Millisecond || d > 3*time.Second {
		t.Errorf("got %v after %v, want the connection closed after about 300ms", err, d)
	}
}

// TestJWKSURLMustBeHTTPS: --check-config refuses a plain http:// --jwks-url unless
// --jwks-allow-http, and a gateway started with one says so loudly; the URL's password
// and secret parameters reach no log line.
func TestJWKSURLMustBeHTTPS(t *testing.T) {
	check := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := run(t.Context(), append([]string{"--check-config"}, args...), env(nil), &out)
		return code, out.String()
	}
	if code, out := check("--jwks-url", "http://idp.internal/jwks"); code != 2 || !strings.Contains(out, "jwks-url") || !strings.Contains(out, "plain http") {
		t.Errorf("plain http JWKS: exit %d (%s), want 2 naming jwks-url and plain http", code, out)
	}
	if code, out := check("--jwks-url", "http://idp.internal/jwks", "--jwks-allow-http"); code != 0 {
		t.Errorf("plain http JWKS, allowed: exit %d (%s), want 0", code, out)
	}
	if code, out := check("--jwks-allow-http"); code != 2 || !strings.Contains(out, "jwks-allow-http") {
		t.Errorf("--jwks-allow-http without a JWKS: exit %d (%s), want 2", code, out)
	}
	if code, out := check("--jwks-url", "https://u:hunter2@idp.internal/jwks?token=tok-123&x=%zz"); code != 0 && strings.Contains(out, "hunter2") {
		t.Errorf("check-config printed the JWKS password: %s", out)
	}

	// Nothing listens on port 1: the fetch fails and is logged, redacted.
	_, logs := runGateway(t, "--jwks-url", "http://ops:hunter2@127.0.0.1:1/jwks?access_token=tok-123", "--jwks-allow-http")
	out := logs.String()
	if !strings.Contains(out, "THE JWKS URL IS PLAIN HTTP") {
		t.Errorf("no loud warning about the plain http JWKS URL:\n%s", out)
	}
	if !strings.Contains(out, "JWKS not fetched at start") {
		t.Errorf("the failed fetch is not logged:\n%s", out)
	}
	for _, secret := range []string{"hunter2", "tok-123"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log shows %q:\n%s", secret, out)
		}
	}
}

// TestAMQPURLSecretsNotShown: the AMQP URL's password shows nowhere: not in the
// listening line (which names the broker, redacted), nor in the error of a URL that does
// not parse (net/url quotes the whole URL in its errors).
func TestAMQPURLSecretsNotShown(t *testing.T) {
	url := amqptest.URL(t)
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	pass, _ := u.User.Password()
	exchange, stream := amqptest.Names(t, url)
	_, logs := runGateway(t, "--amqp-url", url, "--exchange", exchange, "--stream", stream,
		"--presence-channels", "", "--no-user-presence")
	var listening string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "herald gateway listening") {
			listening = l
		}
	}
	u.User = neturl.UserPassword(u.User.Username(), "xxxxx")
	if want := `"amqp_url":"` + u.String() + `"`; !strings.Contains(listening, want) {
		t.Errorf("listening line %s: want it to name the broker as %s", listening, want)
	}
	if pass != "" && pass != u.User.Username() && strings.Contains(logs.String(), ":"+pass+"@") {
		t.Errorf("the log shows the AMQP password:\n%s", logs)
	}

	for _, bad := range []string{"amqp://guest:se%zzcret@127.0.0.1:5672/", "amqp://guest:zz/cret@127.0.0.1:5672/"} {
		var out bytes.Buffer
		code := run(t.Context(), []string{"--amqp-url", bad, "--log-format", "json"}, env(nil), &out)
		if code == 0 || strings.Contains(out.String(), "zz") {
			t.Errorf("a URL that does not parse: exit %d, output %s: want a failure that does not show the password", code, out.String())
		}
	}
}
