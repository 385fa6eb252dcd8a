package amqplink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/amqptest"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// hooks records a link's OnNode and OnFailover calls. mu protects nodes and failovers.
type hooks struct {
	mu        sync.Mutex
	nodes     []int
	failovers []string
}

func (h *hooks) install(c *Config) {
	c.OnNode = func(link string, node int) {
		h.mu.Lock()
		h.nodes = append(h.nodes, node)
		h.mu.Unlock()
	}
	c.OnFailover = func(link string, from, to int) {
		h.mu.Lock()
		h.failovers = append(h.failovers, fmt.Sprintf("%s %d->%d", link, from, to))
		h.mu.Unlock()
	}
}

func (h *hooks) get() ([]int, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.nodes...), append([]string(nil), h.failovers...)
}

// waitNodes waits until the OnNode calls are want.
func (h *hooks) waitNodes(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		nodes, _ := h.get()
		if fmt.Sprint(nodes) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("OnNode calls: got %v, want %s", nodes, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// deadAddr returns an address where nothing listens.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// silentListener accepts connections and never answers: a node whose VM is frozen
// (the kernel completes the TCP handshake, nothing more comes).
func silentListener(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

// freezer is a TCP proxy to a broker that can stop forwarding in both directions at
// once, with the sockets left open: a node that hangs.
type freezer struct {
	addr   string
	mu     sync.Mutex
	frozen chan struct{} // closed by freeze
	conns  []net.Conn
}

func newFreezer(t *testing.T, target string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{addr: ln.Addr().String(), frozen: make(chan struct{})}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, b)
			f.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); f.pipe(b, c) }()
			go func() { defer wg.Done(); f.pipe(c, b) }()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			_ = c.Close()
		}
		f.mu.Unlock()
		wg.Wait()
	})
	return f
}

// pipe copies from src to dst until src ends or the freezer freezes; then it holds
// what it read, until the connections are closed.
func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-f.frozen:
			_, _ = io.Copy(io.Discard, src) // read on, forward nothing, until closed
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			_ = dst.Close()
			return
		}
	}
}

func (f *freezer) freeze() { close(f.frozen) }

func TestValidate(t *testing.T) {
	good := amqptest.DefaultURL
	tests := []struct {
		name string
		cfg  Config
		want string // "" for valid
	}{
		{"one URL", Config{URLs: []string{good}}, ""},
		{"three URLs", Config{URLs: []string{good, "amqp://b:5672/", "amqps://c/"}}, ""},
		{"no URL", Config{}, "URL is required"},
		{"not AMQP", Config{URLs: []string{"http://x/"}}, "URL http://x/"},
		{"bad second URL, password hidden", Config{URLs: []string{good, "amqp://u:se%zzcret@h/"}}, "URL 2 of 2"},
		{"negative heartbeat", Config{URLs: []string{good}, Heartbeat: -time.Second}, "Heartbeat -1s is negative"},
		{"min above max", Config{URLs: []string{good}, ReconnectMin: 2 * time.Second, ReconnectMax: time.Second}, "ReconnectMin 2s is above ReconnectMax 1s"},
		// One validator for every link: a minimum above the default maximum is refused,
		// never raised silently.
		{"min above the default max", Config{URLs: []string{good}, ReconnectMin: time.Minute}, "ReconnectMin 1m0s is above ReconnectMax 10s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate: got %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate: got %v, want an error containing %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "zzcret") {
				t.Errorf("Validate: got %q, which holds a password", err)
			}
		})
	}
	d := Config{}.withDefaults()
	if d.DialTimeout != 5*time.Second || d.Heartbeat != 5*time.Second || d.CallTimeout != 15*time.Second ||
		d.ReconnectMin != 100*time.Millisecond || d.ReconnectMax != 10*time.Second || d.Link != "amqp" || d.Logger == nil {
		t.Errorf("defaults: got %+v", d)
	}
}

func TestSplitURLs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"amqp://a/", []string{"amqp://a/"}},
		{"amqp://a:5672/, amqps://b:5671/vh ,amqp://c/", []string{"amqp://a:5672/", "amqps://b:5671/vh", "amqp://c/"}},
		// A comma in a password does not split the URL.
		{"amqp://u:p,w@a/,amqp://b/", []string{"amqp://u:p,w@a/", "amqp://b/"}},
	}
	for _, tt := range tests {
		if got := SplitURLs(tt.in); fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tt.want) {
			t.Errorf("SplitURLs(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, time.Second
	for n, ceil := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		ceil *= time.Millisecond
		spread := map[time.Duration]bool{}
		for range 200 {
			d := Backoff(n, lo, hi)
			if d < 0 || d > ceil {
				t.Fatalf("Backoff(%d): got %v, want within [0, %v] (full jitter)", n, d, ceil)
			}
			spread[d] = true
		}
		if len(spread) < 100 {
			t.Errorf("Backoff(%d): got %d distinct values in 200, want jitter", n, len(spread))
		}
	}
	if d := Backoff(1000, lo, hi); d < 0 || d > hi {
		t.Errorf("Backoff(1000): got %v, want within [0, %v]", d, hi)
	}
	if d := Backoff(3, 0, 0); d != 0 {
		t.Errorf("Backoff with no delays: got %v, want 0", d)
	}
}

// TestDialMovesOnAfterALoss: a link dials the first node that answers, in order, and
// after losing its connection starts with the next node: a failover, logged and
// reported to the hooks, with the gauge's node going to -1 between.
func TestDialMovesOnAfterALoss(t *testing.T) {
	url := amqptest.URL(t)
	dead := "amqp://guest:secret@" + deadAddr(t) + "/"
	var h hooks
	cfg := Config{URLs: []string{dead, url, url}, Link: "test", Logger: testLogger(t)}
	h.install(&cfg)
	l, err := NewLink(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Wait()
	c, err := l.Dial(t.Context())
	if err != nil {
		t.Fatalf("Dial: got %v, want the second node", err)
	}
	if c.Node() != 1 {
		t.Errorf("Dial: got node %d, want 1 (the first that answers)", c.Node())
	}
	if n, ok := l.Current(); !ok || n != 1 {
		t.Errorf("Current: got %d, %v; want 1, true", n, ok)
	}
	_ = c.Close()
	h.waitNodes(t, "[1 -1]")

	c, err = l.Dial(t.Context())
	if err != nil {
		t.Fatalf("Dial after the loss: got %v", err)
	}
	if c.Node() != 2 {
		t.Errorf("Dial after losing node 1: got node %d, want 2 (the next one)", c.Node())
	}
	_ = c.Close()
	h.waitNodes(t, "[1 -1 2 -1]")
	// After losing the last node it wraps to the first, which does not answer.
	c, err = l.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if c.Node() != 1 {
		t.Errorf("Dial after losing the last node: got node %d, want 1", c.Node())
	}
	_ = c.Close()
	h.waitNodes(t, "[1 -1 2 -1 1 -1]")
	if _, f := h.get(); fmt.Sprint(f) != "[test 1->2 test 2->1]" {
		t.Errorf("OnFailover calls: got %v, want [test 1->2 test 2->1]", f)
	}
}

func TestDialNoNodeAnswers(t *testing.T) {
	a, b := "amqp://guest:secret@"+deadAddr(t)+"/", "amqp://guest:secret@"+silentListener(t)+"/"
	l, err := NewLink(Config{URLs: []string{a, b}, Link: "test", DialTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = l.Dial(t.Context())
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "no node of 2 answers") || !strings.Contains(err.Error(), "node 2 (") {
		t.Fatalf("Dial: got %v, want no node of 2 answers, naming each", err)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("Dial: got %q, which holds a password", err)
	}
	// The silent node costs DialTimeout, not more.
	if took > 3*time.Second {
		t.Errorf("Dial took %v with a DialTimeout of 300ms", took)
	}

	// Cancelling ends the attempt at once.
	l2, _ := NewLink(Config{URLs: []string{b}, DialTimeout: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := l2.Dial(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial cancelled: got %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("cancelled Dial took %v", took)
	}
}

// TestHeartbeatFindsAFrozenNode: a node that stops answering without closing its
// sockets is given up within 1.5 heartbeats, and a call waiting on it ends then.
func TestHeartbeatFindsAFrozenNode(t *testing.T) {
	url := amqptest.URL(t)
	f := newFreezer(t, "127.0.0.1:5672")
	u, err := amqp.ParseURI(url)
	if err != nil {
		t.Fatal(err)
	}
	u.Host, u.Port = strings.Split(f.addr, ":")[0], atoi(strings.Split(f.addr, ":")[1])
	l, err := NewLink(Config{URLs: []string{u.String()}, Heartbeat: time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Wait()
	s, err := l.Open(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f.freeze()
	start := time.Now()
	select {
	case <-s.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("the channel of a frozen node still open after 10s")
	}
	took := time.Since(start)
	t.Logf("frozen node given up after %v (heartbeat 1s)", took.Round(time.Millisecond))
	if took > 4*time.Second {
		t.Errorf("frozen node given up after %v, want within about 1.5 heartbeats", took)
	}
}

// TestGuardBoundsACall: a call on a node that does not answer ends when the link's
// CallTimeout passes, with the connection.
func TestGuardBoundsACall(t *testing.T) {
	url := amqptest.URL(t)
	f := newFreezer(t, "127.0.0.1:5672")
	u, _ := amqp.ParseURI(url)
	u.Host, u.Port = "127.0.0.1", atoi(strings.Split(f.addr, ":")[1])
	l, err := NewLink(Config{URLs: []string{u.String()}, Heartbeat: time.Hour, CallTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Wait()
	c, err := l.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f.freeze()
	stop := c.Guard(t.Context())
	start := time.Now()
	_, err = c.Channel() // waits for channel.open-ok, which never comes
	stop()
	if err == nil {
		t.Fatal("Channel on a frozen node: got nil error")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("guarded call ended after %v, want about the CallTimeout of 500ms", took)
	}
}

func atoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}

// TestKeepReconnects: Keep serves a session until it is lost, then opens another on the
// next node, and returns nil once ctx ends; an open refused for good stops it.
func TestKeepReconnects(t *testing.T) {
	url := amqptest.URL(t)
	var h hooks
	cfg := Config{URLs: []string{url, url}, Link: "test", Logger: testLogger(t),
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond}
	h.install(&cfg)
	l, err := NewLink(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Wait()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	served := make(chan *Session, 4)
	done := make(chan error, 1)
	go func() {
		done <- l.Keep(ctx, nil, func(ctx context.Context) (*Session, error) { return l.Open(ctx, nil) },
			func(s *Session) error {
				served <- s
				select {
				case <-ctx.Done():
					return nil
				case <-s.Closed():
					return s.CloseReason("test")
				}
			})
	}()
	first := <-served
	_ = first.Conn.Connection.Close() // lost
	var second *Session
	select {
	case second = <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("no second session within 5s")
	}
	if first.Node() != 0 || second.Node() != 1 {
		t.Errorf("sessions on nodes %d then %d, want 0 then 1", first.Node(), second.Node())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Keep: got %v after cancel, want nil", err)
	}
	if !second.IsClosed() {
		t.Errorf("the last session is open after Keep returned")
	}

	// A refusal for good ends Keep with it.
	refused := errors.New("refused")
	err = l.Keep(t.Context(), nil, func(context.Context) (*Session, error) { return nil, Permanent(refused) },
		func(*Session) error { return nil })
	if !errors.Is(err, refused) || !IsPermanent(err) {
		t.Errorf("Keep with an open refused for good: got %v, want it", err)
	}
}
