package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// The attacks of issue 15, section 1, re-run as bounded tests against the gateway as
// main builds it.

// TestOriginFloodRateLimitedWithBoundedLog: 3,000 handshakes with a 15 KB Origin from
// one address are answered 429 past the handshake burst (the rate limit comes before
// the origin check), and the log holds a bounded number of bytes: a few sampled lines,
// each with a bounded prefix of the origin, and a count of those left out.
func TestOriginFloodRateLimitedWithBoundedLog(t *testing.T) {
	addr, logs := runGateway(t, "--handshake-rate", "20", "--handshake-burst", "100")
	origin := "https://" + strings.Repeat("a", 15000) + ".example.com"
	before := logs.bytes()
	const total, workers = 3000, 8
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var forbidden, limited, other atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	next := atomic.Int64{}
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= total {
				req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/ws", nil)
				req.Header.Set("Origin", origin)
				req.Header.Set("Connection", "Upgrade")
				req.Header.Set("Upgrade", "websocket")
				req.Header.Set("Sec-WebSocket-Version", "13")
				req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
				resp, err := client.Do(req)
				if err != nil {
					other.Add(1)
					continue
				}
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusForbidden:
					forbidden.Add(1)
				case http.StatusTooManyRequests:
					limited.Add(1)
				default:
					other.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	// At most the burst and what the rate refilled meanwhile reach the origin check.
	maxPassed := 100 + int64(20*elapsed.Seconds()) + 1
	if other.Load() != 0 || forbidden.Load() > maxPassed || forbidden.Load()+limited.Load() != total {
		t.Errorf("in %v: %d answered 403, %d 429, %d otherwise; want at most %d 403 and the rest 429",
			elapsed, forbidden.Load(), limited.Load(), other.Load(), maxPassed)
	}
	// The bound: 10 lines at once and 1 a second (each under 400 bytes with the clipped
	// origin), and the reports, in all a few KiB (before: 44 MB in 1.7s).
	time.Sleep(100 * time.Millisecond) // the last lines reach the buffer
	logged := logs.bytes() - before
	if bound := 400 * (12 + int(elapsed.Seconds())); logged > bound {
		t.Errorf("the flood wrote %d bytes of log in %v, want at most %d", logged, elapsed, bound)
	}
	if strings.Contains(logs.String(), strings.Repeat("a", 100)) {
		t.Error("a log line holds more than a bounded prefix of the origin")
	}
	t.Logf("%d handshakes in %v: %d answered 403, %d 429; %d bytes of log", total, elapsed, forbidden.Load(), limited.Load(), logged)
}

// silentRequest opens a connection to addr and sends a request's headers, declaring a
// body it never sends.
func silentRequest(addr, head string) (net.Conn, error) {
	return silentRequestFrom(nil, addr, head)
}

// silentRequestFrom is silentRequest from the local address from (nil: any).
func silentRequestFrom(from net.Addr, addr, head string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: from}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(c, head); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// fds counts the open descriptors of process pid.
func fds(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// metric returns the value of the sample named series (with its labels, as exposed)
// from the metrics at url.
func metric(t *testing.T, url, series string) float64 {
	t.Helper()
	resp, err := noKeepAlive.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("%s: no %s", url, series)
	return 0
}

// noKeepAlive is a client that leaves no idle connection in the gateway.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}

func hs256(t *testing.T, secret, sub string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "exp": time.Now().Add(time.Hour).Unix()}).
		SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestSilentBodies: 3,000 connections send whole request headers that declare a body
// (Content-Length: 1000, or chunked) and then nothing, to /ws without a token (401) and
// to /api/publish with and without the key. While they are held, a refusal is answered
// at once (Connection: close: it does not wait for the body) and a legitimate WebSocket
// client connects within a second; once the read timeout has passed, the gateway has
// closed them all, and its descriptors and goroutines are back to where they were.
func TestSilentBodies(t *testing.T) {
	const secret = "silent-bodies-secret-of-32-bytes!"
	const readTimeout = 6 * time.Second // long enough to hold all 3,000 at once on a busy machine
	p := startProcess(t, "silent", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--jwt-secret", secret,
		"--api-key", apiKey, "--read-timeout", readTimeout.String(), "--read-header-timeout", "1s",
		"--handshake-rate", "0", "--max-connections-per-ip", "0", "--log-format", "json")
	pid := p.cmd.Process.Pid
	metrics := "http://" + p.admin + "/metrics"
	time.Sleep(200 * time.Millisecond) // settle
	baseFDs, baseGoroutines := fds(t, pid), metric(t, metrics, "go_goroutines")

	heads := []string{
		"GET /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
		"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + apiKey + "\r\nContent-Length: 1000\r\n\r\n",
		"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
		"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
	}
	const attackers = 3000
	conns := make([]net.Conn, 0, attackers)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := range attackers {
		c, err := silentRequest(p.addr, heads[i%len(heads)])
		if err != nil {
			t.Fatalf("attacker %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	waitUntil(t, "the gateway to hold every attacker", readTimeout-2*time.Second, func() bool {
		return fds(t, pid) >= baseFDs+attackers
	})
	held := fds(t, pid)

	// A refusal is answered at once, body or not.
	for i := range 5 {
		c := conns[i*len(heads)]
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusUnauthorized || !resp.Close {
			t.Fatalf("GET /ws with a silent body and no token: got %v %v, want 401 with Connection: close at once", resp, err)
		}
	}
	// A legitimate client connects while the attackers are held.
	dialStart := time.Now()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+p.addr+"/ws?token="+hs256(t, secret, "alice"), nil)
	dialTime := time.Since(dialStart)
	if err != nil || dialTime > time.Second {
		t.Fatalf("a legitimate client while %d attackers are held: %v after %v, want connected within 1s", attackers, err, dialTime)
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, data, err := ws.ReadMessage(); err != nil || !strings.Contains(string(data), `"welcome"`) {
		t.Fatalf("legitimate client: got %s %v, want welcome", data, err)
	}
	ws.Close()

	// Past the read timeout every attacker has been closed, and what they held is free.
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(readTimeout + 5*time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("attacker %d: %v, want the gateway to close it within the read timeout", i, err)
		}
	}
	closedAfter := time.Since(start)
	var afterFDs int
	var afterGoroutines float64
	waitUntil(t, "descriptors and goroutines back to their baseline", 10*time.Second, func() bool {
		afterFDs, afterGoroutines = fds(t, pid), metric(t, metrics, "go_goroutines")
		return afterFDs <= baseFDs+2 && afterGoroutines <= baseGoroutines+5
	})
	t.Logf("%d silent requests: gateway descriptors %d at rest, %d held, %d after; goroutines %v, then %v; a legitimate client connected in %v meanwhile; all closed within %v",
		attackers, baseFDs, held, afterFDs, baseGoroutines, afterGoroutines, dialTime, closedAfter)
}

// TestSilentBodiesWithFewDescriptors is the attack as reported: the gateway may open
// 1,200 descriptors, and 3,000 silent requests come from one address (127.0.0.2). The
// caps keep the attacker to its share of pending connections (the others are closed at
// accept), so descriptors never run out and a client from another address (127.0.0.1)
// connects within a second. Before: 1,200 silent connections took every descriptor
// (accept4: too many open files) and nobody could connect.
func TestSilentBodiesWithFewDescriptors(t *testing.T) {
	const readTimeout = 2 * time.Second
	cmd := exec.Command("sh", "-c", `ulimit -n 1200 && exec "$0" "$@"`, bins.gateway,
		"--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--api-key", apiKey, "--log-format", "json",
		"--read-timeout", readTimeout.String(), "--read-header-timeout", "1s", "--handshake-rate", "0",
		"--max-connections", "100", "--max-pending-connections", "500", "--max-pending-connections-per-ip", "250")
	p := runProcess(t, "few-descriptors", cmd)
	pid := p.cmd.Process.Pid
	baseFDs := fds(t, pid)
	attacker := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 3000 {
		c, err := silentRequestFrom(attacker, p.addr, "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
		if err == nil {
			conns = append(conns, c)
		}
	}
	held := fds(t, pid)
	for deadline := time.Now().Add(readTimeout / 2); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		held = max(held, fds(t, pid))
		if metric(t, "http://"+p.admin+"/metrics", `herald_limits_hit_total{limit="pending_connections_per_ip"}`) >= 3000-250 {
			break // every attacker accepted, and all but 250 closed
		}
	}
	if held > baseFDs+250+5 {
		t.Errorf("the gateway holds %d descriptors (%d at rest), want at most the attacker's 250 more", held, baseFDs)
	}
	dialStart := time.Now()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+p.addr+"/ws", nil)
	dialTime := time.Since(dialStart)
	if err != nil || dialTime > time.Second {
		t.Fatalf("a client from another address under attack: %v after %v, want connected within 1s", err, dialTime)
	}
	ws.Close()
	waitUntil(t, "descriptors back to their baseline", readTimeout+10*time.Second, func() bool { return fds(t, pid) <= baseFDs+2 })
	t.Logf("3,000 silent requests from one address, 1,200 descriptors: %d at rest, %d held, a client from another address connected in %v",
		baseFDs, held, dialTime)
}

func TestWarnDescriptors(t *testing.T) {
	limit, ok := descriptorLimit()
	if !ok {
		t.Skip("no descriptor limit on this platform")
	}
	var out strings.Builder
	log := slog.New(slog.NewTextHandler(&out, nil))
	warnDescriptors(int(min(limit, 1<<30)), 10, log)
	if !strings.Contains(out.String(), "exceed the descriptors") {
		t.Errorf("max-connections at the descriptor limit: got %q, want a warning", out.String())
	}
	out.Reset()
	if limit > 1000 {
		warnDescriptors(100, 100, log)
		if out.String() != "" {
			t.Errorf("limits well within %d descriptors: got %q, want no warning", limit, out.String())
		}
	}
}

// waitUntil polls ok until it holds, or fails the test after within.
func waitUntil(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAdminListenerWhilePublicSaturated: with the public listener at its cap of pending
// connections (new ones closed at accept and counted), the admin listener still answers
// /metrics and /readyz; /metrics is not public, pprof is on the admin listener only.
func TestAdminListenerWhilePublicSaturated(t *testing.T) {
	const maxPending = 100
	p := startProcess(t, "saturated", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--max-pending-connections", strconv.Itoa(maxPending), "--log-format", "json")
	for _, tt := range []struct {
		url  string
		want int
	}{
		{"http://" + p.addr + "/metrics", http.StatusNotFound},
		{"http://" + p.addr + "/debug/pprof/", http.StatusNotFound},
		{"http://" + p.addr + "/healthz", http.StatusOK},
		{"http://" + p.addr + "/readyz", http.StatusOK},
		{"http://" + p.admin + "/debug/pprof/", http.StatusOK},
	} {
		resp, err := noKeepAlive.Get(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("GET %s: got %d, want %d", tt.url, resp.StatusCode, tt.want)
		}
	}

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 3 * maxPending {
		c, err := silentRequest(p.addr, "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
		if err == nil {
			conns = append(conns, c)
		}
	}
	admin := "http://" + p.admin
	waitUntil(t, "the public listener at its cap", 5*time.Second, func() bool {
		return metric(t, admin+"/metrics", `herald_limits_hit_total{limit="pending_connections"}`) >= 2*maxPending
	})
	if n := metric(t, admin+"/metrics", "herald_http_pending_connections"); n != maxPending {
		t.Errorf("pending connections: got %v, want %d", n, maxPending)
	}
	if _, err := noKeepAlive.Get("http://" + p.addr + "/readyz"); err == nil {
		t.Error("the public listener answered past its cap")
	}
	for _, path := range []string{"/readyz", "/healthz", "/metrics"} {
		start := time.Now()
		resp, err := noKeepAlive.Get(admin + path)
		if err != nil {
			t.Fatalf("admin %s while the public listener is saturated: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("admin %s: got %d, want 200", path, resp.StatusCode)
		}
		t.Logf("admin %s answered in %v", path, time.Since(start))
	}
}

// TestWebSocketOutlivesReadTimeout: the read timeout bounds reading a request, not an
// upgraded WebSocket (the upgrade clears the deadline; the connection keeps its own).
func TestWebSocketOutlivesReadTimeout(t *testing.T) {
	addr, _ := runGateway(t, "--read-timeout", "300ms", "--read-header-timeout", "300ms")
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := ws.ReadMessage(); err != nil { // welcome
		t.Fatal(err)
	}
	time.Sleep(time.Second) // more than three read timeouts, silent
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"subscribe","channel":"late","ref":"1"}`)); err != nil {
		t.Fatal(err)
	}
	if _, data, err := ws.ReadMessage(); err != nil || !strings.Contains(string(data), `"subscribed"`) {
		t.Errorf("after 1s on a gateway with a 300ms read timeout: got %s %v, want subscribed", data, err)
	}
}
