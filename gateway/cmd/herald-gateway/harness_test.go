package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The tests here run the real binaries: herald-gateway processes on the real RabbitMQ,
// the herald-publish CLI, and WebSocket clients that reconnect as herald.js does.

const apiKey = "harness-key"

// bins holds the paths of the binaries built once for the package's tests.
var bins struct {
	gateway, publish string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "herald-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.gateway = filepath.Join(dir, "herald-gateway")
	bins.publish = filepath.Join(dir, "herald-publish")
	for path, pkg := range map[string]string{bins.gateway: ".", bins.publish: "../../../producer/cmd/herald-publish"} {
		out, err := exec.Command("go", "build", "-race", "-o", path, pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running herald-gateway.
type proc struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	addr  string // host:port it listens on
	admin string // host:port of its admin listener, if it has one
	done  chan struct{}
	err   error // how it exited; set before done closes
}

// startGateway runs herald-gateway on RabbitMQ at url with the given exchange and stream
// and waits until it is ready. It is killed when the test ends.
func startGateway(t *testing.T, name, url, exchange, stream string, extra ...string) *proc {
	t.Helper()
	args := append([]string{
		"--addr", "127.0.0.1:0", "--amqp-url", url, "--exchange", exchange, "--stream", stream,
		"--node-id", name, "--api-key", apiKey, "--insecure-user-param", "--log-format", "json",
		"--shutdown-timeout", "10s", "--stream-max-bytes", "104857600",
		// Every test client connects from 127.0.0.1: no per-address limits.
		"--handshake-rate", "0", "--max-connections-per-ip", "0",
	}, extra...)
	return startProcess(t, name, args...)
}

// startProcess runs herald-gateway with args and waits until it is ready. It is killed
// when the test ends.
func startProcess(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return runProcess(t, name, exec.Command(bins.gateway, args...))
}

// runProcess runs cmd, a herald-gateway, and waits until it is ready. It is killed when
// the test ends.
func runProcess(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, name: name, cmd: cmd, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrc := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			var rec struct {
				Msg   string `json:"msg"`
				Addr  string `json:"addr"`
				Admin string `json:"admin"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "herald gateway listening" {
				addrc <- [2]string{rec.Addr, rec.Admin}
			}
			if testing.Verbose() || !strings.Contains(line, `"level":"DEBUG"`) {
				t.Logf("[%s] %s", name, line)
			}
		}
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill() })
	select {
	case a := <-addrc:
		p.addr, p.admin = a[0], a[1]
	case <-p.done:
		t.Fatalf("gateway %s exited at start: %v", name, p.err)
	case <-time.After(20 * time.Second):
		t.Fatalf("gateway %s did not start listening", name)
	}
	p.waitReady(t, 20*time.Second)
	return p
}

func (p *proc) url(path string) string { return "http://" + p.addr + path }

func (p *proc) waitReady(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		resp, err := http.Get(p.url("/readyz"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("gateway %s not ready within %v", p.name, within)
}

func (p *proc) ready() bool {
	resp, err := http.Get(p.url("/readyz"))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (p *proc) signal(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
}

// wait waits for the process to exit and returns its error.
func (p *proc) wait(within time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(within):
		return fmt.Errorf("gateway %s still running after %v", p.name, within)
	}
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// httpPublish posts a message to /api/publish on p; it returns the id and the status.
func httpPublish(p *proc, body string) (string, int, error) {
	req, err := http.NewRequest(http.MethodPost, p.url("/api/publish"), strings.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	var out struct {
		ID string `json:"id"`
	}
	data, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(data, &out)
	return out.ID, resp.StatusCode, nil
}

// delivery is a message frame a client received.
type delivery struct {
	ID      string          `json:"id"`
	Channel string          `json:"channel"`
	Offset  int64           `json:"offset"`
	From    string          `json:"from"`
	Data    json.RawMessage `json:"data"`
	at      time.Time
}

// wsClient is a WebSocket client that, like herald.js, reconnects after the connection
// ends (to the next gateway of its list) with since set to the last offset it saw.
type wsClient struct {
	t        *testing.T
	name     string
	query    string
	gateways func() []*proc // where to connect; the first that answers wins

	mu          sync.Mutex
	strict      bool // a reset is an error: nothing should be outside retention
	got         []delivery
	frames      []map[string]any // non-message frames
	last        int64            // last offset seen; -2 before welcome
	reconnects  int
	closeCodes  []int
	conn        *websocket.Conn
	connectedTo string

	stop chan struct{}
	done chan struct{}
}

// newClient connects a client, waits for its welcome, and keeps it connected until the
// test ends.
func newClient(t *testing.T, name, query string, gateways func() []*proc) *wsClient {
	t.Helper()
	c := &wsClient{t: t, name: name, query: query, gateways: gateways, last: -2,
		stop: make(chan struct{}), done: make(chan struct{})}
	first := make(chan error, 1)
	go c.run(first)
	if err := <-first; err != nil {
		t.Fatalf("client %s: %v", name, err)
	}
	t.Cleanup(c.close)
	// Connected once welcomed: the gateway joins a connection to the hub after the
	// upgrade's answer, so a message published between the two is not the client's
	// (welcome's offset says so), and a test that publishes next would expect it.
	c.waitFrame(t, "welcome", 10*time.Second)
	return c
}

func (c *wsClient) close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.mu.Lock()
	if c.conn != nil {
		_ = c.conn.Close()
	}
	c.mu.Unlock()
	<-c.done
}

func (c *wsClient) run(first chan error) {
	defer close(c.done)
	backoff := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		select {
		case <-c.stop:
			return
		default:
		}
		ws, to, err := c.dial()
		if err != nil {
			if first != nil {
				first <- err
				return
			}
			time.Sleep(backoff)
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		c.mu.Lock()
		c.conn, c.connectedTo = ws, to
		if attempt > 0 {
			c.reconnects++
		}
		c.mu.Unlock()
		if first != nil {
			first <- nil
			first = nil
		}
		c.read(ws)
	}
}

func (c *wsClient) dial() (*websocket.Conn, string, error) {
	c.mu.Lock()
	q := c.query
	if c.last >= -1 {
		q += fmt.Sprintf("&since=%d", c.last)
	}
	c.mu.Unlock()
	var errs []error
	for _, p := range c.gateways() {
		u := "ws://" + p.addr + "/ws?" + q
		d := websocket.Dialer{HandshakeTimeout: 2 * time.Second}
		ws, _, err := d.Dial(u, nil)
		if err == nil {
			return ws, p.name, nil
		}
		errs = append(errs, err)
	}
	return nil, "", errors.Join(errs...)
}

func (c *wsClient) read(ws *websocket.Conn) {
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			code := websocket.CloseAbnormalClosure
			if errors.As(err, &ce) {
				code = ce.Code
			}
			c.mu.Lock()
			c.closeCodes = append(c.closeCodes, code)
			c.mu.Unlock()
			_ = ws.Close()
			return
		}
		var f map[string]any
		if err := json.Unmarshal(data, &f); err != nil {
			c.t.Errorf("client %s: frame %s: %v", c.name, data, err)
			continue
		}
		now := time.Now()
		c.mu.Lock()
		switch f["op"] {
		case "message":
			var d delivery
			_ = json.Unmarshal(data, &d)
			d.at = now
			c.got = append(c.got, d)
			c.last = d.Offset
		case "welcome":
			if off, ok := f["offset"].(float64); ok && c.last == -2 {
				c.last = int64(off)
			}
			c.frames = append(c.frames, f)
		case "reset":
			if c.strict {
				c.t.Errorf("client %s: got %v: nothing should be outside retention here", c.name, f)
			}
			c.frames = append(c.frames, f)
		default:
			c.frames = append(c.frames, f)
		}
		c.mu.Unlock()
	}
}

// send writes a frame on the current connection.
func (c *wsClient) send(v any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return errors.New("not connected")
	}
	return c.conn.WriteJSON(v)
}

func (c *wsClient) deliveries() []delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]delivery(nil), c.got...)
}

// waitFrame waits until the client has received a frame with op.
func (c *wsClient) waitFrame(t *testing.T, op string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c.mu.Lock()
		for _, f := range c.frames {
			if f["op"] == op {
				c.mu.Unlock()
				return
			}
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("client %s: no %s frame within %v", c.name, op, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFor waits until the client has received every id in ids.
func (c *wsClient) waitFor(t *testing.T, ids []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		have := make(map[string]bool)
		for _, d := range c.deliveries() {
			have[d.ID] = true
		}
		var missing []string
		for _, id := range ids {
			if !have[id] {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.mu.Lock()
			frames := fmt.Sprint(c.frames)
			c.mu.Unlock()
			t.Fatalf("client %s: %d of %d messages missing after %v: %v; its control frames: %s",
				c.name, len(missing), len(ids), within, missing[:min(5, len(missing))], frames)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// check verifies what a client received against the ids accepted, in order of
// acceptance: each exactly once, offsets strictly increasing. It returns the number
// received and the longest time without a delivery between the first and last.
func (c *wsClient) check(t *testing.T, accepted []string) (received int, longestGap time.Duration) {
	t.Helper()
	got := c.deliveries()
	seen := make(map[string]int)
	var prev *delivery
	for i := range got {
		d := &got[i]
		seen[d.ID]++
		if prev != nil {
			if d.Offset <= prev.Offset {
				t.Errorf("client %s: offset %d after %d: out of order or duplicate", c.name, d.Offset, prev.Offset)
			}
			longestGap = max(longestGap, d.at.Sub(prev.at))
		}
		prev = d
	}
	lost, dup := 0, 0
	for _, id := range accepted {
		switch n := seen[id]; {
		case n == 0:
			lost++
		case n > 1:
			dup += n - 1
		}
	}
	if lost > 0 || dup > 0 {
		t.Errorf("client %s: %d lost, %d duplicated of %d accepted", c.name, lost, dup, len(accepted))
	}
	return len(got), longestGap
}

func (c *wsClient) stats() (reconnects int, codes []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconnects, append([]int(nil), c.closeCodes...)
}

// steadyPublisher publishes to everyone through the gateways' HTTP API at a steady rate,
// retrying a refused publish with the same id until it is accepted, as a backend service
// would; accepted lists the ids in order of acceptance.
type steadyPublisher struct {
	mu       sync.Mutex
	accepted []string
	refused  int
	stop     context.CancelFunc
	done     chan struct{}
}

func startPublisher(t *testing.T, every time.Duration, gateways func() []*proc) *steadyPublisher {
	return startNamedPublisher(t, "steady", every, gateways)
}

// startNamedPublisher is startPublisher with ids that start with name: publishers of
// the same test must have names of their own.
func startNamedPublisher(t *testing.T, name string, every time.Duration, gateways func() []*proc) *steadyPublisher {
	ctx, cancel := context.WithCancel(context.Background())
	sp := &steadyPublisher{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(sp.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for n := 0; ; n++ {
			id := fmt.Sprintf("%s-%d", name, n)
			body := fmt.Sprintf(`{"id":%q,"data":{"n":%d}}`, id, n)
			for {
				if ctx.Err() != nil {
					return
				}
				ok := false
				for _, p := range gateways() {
					if _, status, err := httpPublish(p, body); err == nil && status == http.StatusAccepted {
						ok = true
						break
					}
				}
				if ok {
					break
				}
				sp.mu.Lock()
				sp.refused++
				sp.mu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
			sp.mu.Lock()
			sp.accepted = append(sp.accepted, id)
			sp.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(sp.halt)
	return sp
}

func (sp *steadyPublisher) halt() {
	sp.stop()
	<-sp.done
}

func (sp *steadyPublisher) ids() ([]string, int) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return append([]string(nil), sp.accepted...), sp.refused
}

func (sp *steadyPublisher) count() int {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return len(sp.accepted)
}

// waitCount waits until the publisher has had n more messages accepted.
func (sp *steadyPublisher) waitMore(t *testing.T, n int, within time.Duration) {
	t.Helper()
	target := sp.count() + n
	deadline := time.Now().Add(within)
	for sp.count() < target {
		if time.Now().After(deadline) {
			t.Fatalf("publisher: fewer than %d more accepted within %v", n, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
