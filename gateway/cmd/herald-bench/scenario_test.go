package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/heraldgw/herald/producer/amqptest"
)

// gatewayBuild is herald-gateway built once for the scenario tests.
var gatewayBuild struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// runTests runs the package's tests and removes what they built.
func runTests(m *testing.M) int {
	code := m.Run()
	if gatewayBuild.dir != "" {
		os.RemoveAll(gatewayBuild.dir)
	}
	return code
}

// gatewayBin builds herald-gateway (once) and returns its path.
func gatewayBin(t *testing.T) string {
	t.Helper()
	gatewayBuild.once.Do(func() {
		gatewayBuild.dir, gatewayBuild.err = os.MkdirTemp("", "herald-bench-test-")
		if gatewayBuild.err != nil {
			return
		}
		gatewayBuild.bin = filepath.Join(gatewayBuild.dir, "herald-gateway")
		out, err := exec.Command("go", "build", "-o", gatewayBuild.bin, "../herald-gateway").CombinedOutput()
		if err != nil {
			gatewayBuild.err = fmt.Errorf("go build herald-gateway: %v\n%s", err, out)
		}
	})
	if gatewayBuild.err != nil {
		t.Fatal(gatewayBuild.err)
	}
	return gatewayBuild.bin
}

// freePorts returns a port p such that p .. p+n-1 are free on 127.0.0.1.
func freePorts(t *testing.T, n int) int {
	t.Helper()
	for range 50 {
		base := 20000 + rand.IntN(20000)
		free := true
		for i := range n {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+i))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			return base
		}
	}
	t.Fatalf("no %d free ports in a row", n)
	return 0
}

// runScenario runs drain or rolling with args (plus the test's gateway, ports, output and
// JSON) and returns its result.
func runScenario(t *testing.T, name string, gateways int, args ...string) ScenarioResult {
	t.Helper()
	url := amqptest.URL(t)
	bin := gatewayBin(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	args = append([]string{name, "-gateway-bin", bin, "-amqp-url", url, "-port", strconv.Itoa(freePorts(t, gateways)),
		"-out", t.TempDir(), "-json", "-quiet-below", "0", "-gateway-args", "-shutdown-timeout 10s -log-level info"}, args...)
	var stdout bytes.Buffer
	stderr := &lockedBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if code := run(ctx, args, &stdout, stderr); code != 0 {
		t.Fatalf("herald-bench %s: exit %d\n%s", strings.Join(args, " "), code, stderr.String())
	}
	t.Logf("herald-bench %s:\n%s", name, stderr.String())
	var res ScenarioResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("result: %v\n%s", err, stdout.String())
	}
	return res
}

// checkEveryClient checks that every client got every accepted message of its channel
// once, in order, and resumed after each close.
func checkEveryClient(t *testing.T, res ScenarioResult, clients int) {
	t.Helper()
	if res.Connected != int64(clients) || res.ClientsOK != clients || res.Lost != 0 || res.Dups != 0 || res.Disorder != 0 || res.Resets != 0 {
		t.Errorf("connected %d, ok %d of %d; lost %d, dups %d, disorder %d, resets %d; failures %v",
			res.Connected, res.ClientsOK, clients, res.Lost, res.Dups, res.Disorder, res.Resets, res.Failures)
	}
	if res.Accepted == 0 || res.Resume.Count != res.Resumes || res.Resume.MaxMs <= 0 || res.Delivery.Count == 0 {
		t.Errorf("accepted %d, resumes %d (histogram %d, max %.1f ms), deliveries %d: want all above 0",
			res.Accepted, res.Resumes, res.Resume.Count, res.Resume.MaxMs, res.Delivery.Count)
	}
}

// TestDrainScenario runs the drain storm with 20 clients on the real RabbitMQ and two real
// gateways: every client is closed by A, resumes on B, and gets every message once, in
// order.
func TestDrainScenario(t *testing.T) {
	res := runScenario(t, "drain", 2, "-clients", "20", "-channels", "2", "-rate", "50", "-warmup", "2s", "-after", "2s", "-workers", "1")
	checkEveryClient(t, res, 20)
	if res.Resumes != 20 || len(res.Steps) != 1 || res.Steps[0].ExitErr != "" || res.LastResumedSecs <= 0 {
		t.Errorf("resumes %d, steps %+v, last resumed after %.2fs; want 20 resumes after A exited cleanly",
			res.Resumes, res.Steps, res.LastResumedSecs)
	}
	if res.Closes["close 1001"] != 20 {
		t.Errorf("connections ended by %v, want 20 by close 1001", res.Closes)
	}
}

// TestRollingScenario runs the rolling restart of 4 real gateways with 24 clients spread
// over two worker processes (this test binary started again): every client resumes
// elsewhere when its gateway restarts and gets every message of its channel once, in
// order.
func TestRollingScenario(t *testing.T) {
	res := runScenario(t, "rolling", 4, "-clients", "24", "-channels", "4", "-rate", "50", "-warmup", "1s", "-after", "2s",
		"-workers", "2", "-source-addrs", "4")
	checkEveryClient(t, res, 24)
	if res.Workers != 2 || res.Resumes < 24 || len(res.Steps) != 4 {
		t.Errorf("workers %d, resumes %d, steps %d; want 2 workers, every client resumed at least once, 4 restarts", res.Workers, res.Resumes, len(res.Steps))
	}
	for _, st := range res.Steps {
		if st.ExitErr != "" || st.ReadySecs <= 0 {
			t.Errorf("gateway %d: exit %q, ready after %.2fs", st.Gateway, st.ExitErr, st.ReadySecs)
		}
	}
}

// fakeGateway speaks enough of the protocol to test the fleet's accounting: the first
// connection of each client gets welcome, then the messages of script, then close 1001;
// a reconnect gets the since it asked for echoed in resumed, then the messages of again.
type fakeGateway struct {
	script, again []string // frames after welcome / on reconnect, before resumed
	mu            sync.Mutex
	sinces        []string
}

func (g *fakeGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	since := r.URL.Query().Get("since")
	if since == "" {
		_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"welcome","conn":"x","node":"fake","user":"","offset":9}`))
		for _, f := range g.script {
			_ = ws.WriteMessage(websocket.TextMessage, []byte(f))
		}
		_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "draining"))
		return
	}
	g.mu.Lock()
	g.sinces = append(g.sinces, since)
	g.mu.Unlock()
	// The replay and resumed come in one write with the handshake's answer as often as not.
	_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"welcome","conn":"y","node":"fake","user":"","offset":20}`))
	for _, f := range g.again {
		_ = ws.WriteMessage(websocket.TextMessage, []byte(f))
	}
	_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"resumed","since":`+since+`,"until":20}`))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			return
		}
	}
}

func msg(offset, seq int64) string {
	return fmt.Sprintf(`{"op":"message","id":"m%d","channel":"t-0","offset":%d,"time":"2026-01-01T00:00:00Z","data":{"ts":%d,"seq":%d,"pad":"x"}}`,
		seq, offset, time.Now().UnixNano(), seq)
}

// TestFleetAccountsForEveryMessage runs one client against a fake gateway that loses a
// message, sends one twice and one out of order, and closes: the fleet reconnects with the
// last offset it saw, times the resume, and reports each fault.
func TestFleetAccountsForEveryMessage(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	g := &fakeGateway{
		script: []string{msg(10, 0), msg(11, 1), msg(13, 3), msg(13, 3)}, // 2 is lost; 3 twice
		again:  []string{msg(15, 4), msg(14, 5), msg(16, 7)},             // 5 out of order; 7 was not accepted
	}
	srv := httptest.NewServer(g)
	defer srv.Close()
	defer srv.CloseClientConnections()
	f, err := newFleet(fleetConfig{Count: 1, Channels: 1, Prefix: "t-", Gateways: []string{srv.Listener.Addr().String()},
		Start: 0, Reconnect: 0, SourceFirst: 2, SourceCount: 1, ConnectRate: 100, Dialers: 2})
	if err != nil {
		t.Fatal(err)
	}
	f.connect()
	deadline := time.Now().Add(10 * time.Second)
	for f.progress().Resumed < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no resume: %+v", f.progress())
		}
		time.Sleep(10 * time.Millisecond)
	}
	rep := f.finish(accepted{Total: 8, Failed: []int64{7}})
	if len(rep.Clients) != 1 {
		t.Fatalf("%d clients reported", len(rep.Clients))
	}
	got := rep.Clients[0]
	want := clientReport{ID: 0, Channel: 0, Expected: 7, Got: 5, Lost: 2, Dups: 1, Disorder: 2, Unexpected: 1, Resumes: 1, MaxResume: got.MaxResume}
	if got != want || got.MaxResume <= 0 || got.ok() {
		t.Errorf("got %+v\nwant %+v (max resume above 0, not ok)", got, want)
	}
	// Lost: 2 and 6. Disorder: the second 13, and 14 after 15.
	if g.sinces[0] != "13" {
		t.Errorf("reconnected with since %v, want 13 (the last offset seen)", g.sinces)
	}
	if rep.Closes["close 1001"] != 1 || rep.Resume.hist().TotalCount() != 1 {
		t.Errorf("closes %v, resumes recorded %d; want one close 1001 and one resume", rep.Closes, rep.Resume.hist().TotalCount())
	}
}

func TestScanInt(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
	}{
		{`{"offset":123,"x":1}`, 123},
		{`{"offset":-1}`, -1},
		{`{"offset":0}`, 0},
		{`{"other":5}`, -1},
		{`{"offset":}`, -1},
	} {
		if got := scanInt([]byte(tt.in), keyOffset); got != tt.want {
			t.Errorf("scanInt(%s) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestCheckUpgrade(t *testing.T) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	for _, tt := range []struct {
		head    string
		wantErr string
	}{
		{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", ""},
		{"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: wrong", "wrong"},
		{"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0", "HTTP 503"},
		{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket", "no Sec-WebSocket-Accept"},
	} {
		err := checkUpgrade([]byte(tt.head), key)
		if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("checkUpgrade(%q) = %v, want %q", tt.head, err, tt.wantErr)
		}
	}
}

func TestSparseHistRoundTrip(t *testing.T) {
	h := newTimelineHist()
	for _, v := range []int64{1, 50, 50, 1200, 99000, 5e6} {
		_ = h.RecordValue(v)
	}
	b, err := json.Marshal(toSparse(h))
	if err != nil {
		t.Fatal(err)
	}
	var s sparseHist
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	got := s.hist()
	if got.TotalCount() != h.TotalCount() || got.ValueAtQuantile(50) != h.ValueAtQuantile(50) || got.Max() != h.Max() {
		t.Errorf("round trip: %d values, p50 %d, max %d; want %d, %d, %d", got.TotalCount(), got.ValueAtQuantile(50), got.Max(),
			h.TotalCount(), h.ValueAtQuantile(50), h.Max())
	}
}
