package pending

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// serve runs an http.Server on a Listener with cfg; /hijack hijacks and holds the
// connection until the test ends.
func serve(t *testing.T, cfg Config) (*Listener, string, func() []string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var refused []string
	cfg.OnRefused = func(limit string, _ net.Addr) {
		mu.Lock()
		refused = append(refused, limit)
		mu.Unlock()
	}
	l := NewListener(ln, cfg)
	var held []net.Conn
	mux := http.NewServeMux()
	mux.HandleFunc("/hijack", func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	srv := &http.Server{Handler: mux, ConnState: l.ConnState}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	return l, ln.Addr().String(), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), refused...)
	}
}

func waitCounts(t *testing.T, l *Listener, pending, idle int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p, i := l.Counts()
		if p == pending && i == idle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d pending, %d idle; want %d, %d", p, i, pending, idle)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// closedAtOnce reports whether the server closed c without answering.
func closedAtOnce(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestPendingCap(t *testing.T) {
	l, addr, refused := serve(t, Config{Max: 3})
	var silent []net.Conn
	for range 3 {
		c := dial(t, addr)
		fmt.Fprint(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n") // and then nothing
		silent = append(silent, c)
	}
	waitCounts(t, l, 3, 0)
	if c := dial(t, addr); !closedAtOnce(c) {
		t.Error("a fourth connection was not closed at once")
	}
	if got := refused(); len(got) != 1 || got[0] != LimitPending {
		t.Errorf("refused: got %v, want one %s", got, LimitPending)
	}
	silent[0].Close()
	waitCounts(t, l, 2, 0)
	c := dial(t, addr)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after one left: got %v %v, want 200", resp, err)
	}
	waitCounts(t, l, 2, 1) // answered: idle, no longer pending
}

func TestPendingPerAddrAndUpgrades(t *testing.T) {
	l, addr, refused := serve(t, Config{Max: 100, MaxPerAddr: 2})
	a, b := dial(t, addr), dial(t, addr)
	waitCounts(t, l, 2, 0)
	if c := dial(t, addr); !closedAtOnce(c) {
		t.Error("a third connection from the address was not closed at once")
	}
	if got := refused(); len(got) != 1 || got[0] != LimitPendingPerAddr {
		t.Errorf("refused: got %v, want one %s", got, LimitPendingPerAddr)
	}
	// An upgraded (hijacked) connection leaves the count.
	fmt.Fprint(a, "GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
	waitCounts(t, l, 1, 0)
	b.Close()
	waitCounts(t, l, 0, 0)
	l.mu.Lock()
	n := len(l.conns)
	l.mu.Unlock()
	if n != 0 {
		t.Errorf("%d connections still followed, want none", n)
	}
}

func TestIdleCap(t *testing.T) {
	l, addr, refused := serve(t, Config{Max: 100, MaxIdle: 1})
	get := func(c net.Conn, br *bufio.Reader) {
		t.Helper()
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	a, b := dial(t, addr), dial(t, addr)
	abr, bbr := bufio.NewReader(a), bufio.NewReader(b)
	get(a, abr)
	waitCounts(t, l, 1, 1) // a idle, b pending
	get(b, bbr)            // b answered; one is idle already: b is closed
	waitCounts(t, l, 0, 1)
	if !closedAtOnce(b) {
		t.Error("the second idle connection was kept")
	}
	get(a, abr) // the idle one serves its next request
	waitCounts(t, l, 0, 1)
	if got := refused(); len(got) != 1 || got[0] != LimitIdle {
		t.Errorf("refused: got %v, want one %s", got, LimitIdle)
	}
}
