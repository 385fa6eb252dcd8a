package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/amqptest"
)

// The browser tests of the SSE transport (issue 20): a page with a plain EventSource and
// no Herald code that resumes, with the browser's own Last-Event-ID, on another gateway
// on RabbitMQ; and herald.js behind an nginx that refuses the WebSocket upgrade, which
// falls back to SSE by itself. Like the other browser tests, they skip when Chromium (or
// here RabbitMQ, or nginx) is missing, except in CI (CI=true), where that is a failure.

// rabbitGateway is a gateway on RabbitMQ in this process, served by a plain http.Server
// on an address of the test's choosing (so that another gateway can serve the same URL
// after it).
type rabbitGateway struct {
	name     string
	addr     string
	srv      *gateway.Server
	reg      *prometheus.Registry
	http     *http.Server
	bus      *consumer.Rabbit
	stopBus  context.CancelFunc
	busDone  chan struct{}
	stopOnce sync.Once
}

// startRabbitGateway starts a gateway named name on the exchange and stream given, with
// its own stream consumer, waits until that consumer has read the stream to its head,
// and only then listens on addr ("127.0.0.1:0" for a free port): a stream opened before
// would be refused with 503, which a plain EventSource takes as final. The HTTP handler
// is wrap's around the gateway's. The gateway stops at the end of the test, if not before.
func startRabbitGateway(t *testing.T, name, amqpURL, exchange, stream, addr string, wrap func(http.Handler) http.Handler) *rabbitGateway {
	t.Helper()
	reg := prometheus.NewRegistry()
	metrics := gateway.NewMetrics(reg)
	log := gwtest.Logger(t).With("gateway", name)
	hub := gateway.NewHub(gateway.HubConfig{Metrics: metrics, Logger: log})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bus, err := consumer.NewRabbit(ctx, consumer.RabbitConfig{
		Stream: consumer.StreamConfig{URL: amqpURL, Exchange: exchange, Stream: stream,
			Name: "herald-test-consumer-" + name, Logger: log, OnLogStart: hub.SetLogStart},
		PublisherName:  "herald-test-publisher-" + name,
		Logger:         log,
		Node:           name,
		CanaryInterval: -1, // no canaries in the test's stream
	}, hub)
	if err != nil {
		t.Fatalf("%s: bus: %v", name, err)
	}
	g := &rabbitGateway{name: name, reg: reg, bus: bus, busDone: make(chan struct{})}
	var busCtx context.Context
	busCtx, g.stopBus = context.WithCancel(context.Background())
	go func() {
		defer close(g.busDone)
		if err := bus.Run(busCtx); err != nil && busCtx.Err() == nil {
			t.Errorf("%s: bus: %v", name, err)
		}
	}()
	t.Cleanup(func() { g.stop(t) })
	select {
	case <-bus.Ready():
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: the stream consumer was not ready within 15s", name)
	}
	g.srv, err = gateway.NewServer(gateway.Config{APIKey: testKey, NodeID: name, Log: bus,
		Logger: log, Metrics: metrics, Registry: reg}, hub, bus, bus)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	g.srv.SetBusReady(true)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s: listen on %s: %v", name, addr, err)
	}
	g.addr = ln.Addr().String()
	g.http = &http.Server{Handler: wrap(g.srv.Handler()), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = g.http.Serve(ln) }()
	return g
}

// stop drains the gateway (its streams end with an error event, going_away), closes its
// listener and stops its bus, as herald-gateway does on SIGTERM.
func (g *rabbitGateway) stop(t *testing.T) {
	g.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if g.srv != nil {
			if err := g.srv.Shutdown(ctx); err != nil {
				t.Errorf("%s: drain: %v", g.name, err)
			}
		}
		if g.http != nil {
			if err := g.http.Shutdown(ctx); err != nil {
				t.Errorf("%s: HTTP shutdown: %v", g.name, err)
			}
		}
		g.stopBus()
		<-g.busDone
		_ = g.bus.Close()
	})
}

// logOnFailure logs the JSON of the JavaScript expression expr in p at the end of the
// test, if it failed: what the page saw.
func logOnFailure(t *testing.T, p *page, expr string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		raw, err := chromedp.Run(p.ctx, chromedp.Evaluate[string]("JSON.stringify("+expr+")"))
		if err != nil {
			t.Logf("%s: %s: unreadable: %v", p.name, expr, err)
			return
		}
		t.Logf("%s: %s: %s", p.name, expr, raw)
	})
}

// publishTo posts body to base's /api/publish and returns the message id.
func publishTo(t *testing.T, base, body string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/api/publish", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s/api/publish: %v", base, err)
	}
	defer resp.Body.Close()
	var out struct {
		ID string `json:"id"`
	}
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(data, &out) != nil || out.ID == "" {
		t.Fatalf("POST %s/api/publish %s: HTTP %d %s, want 202 with an id", base, body, resp.StatusCode, data)
	}
	return out.ID
}

// eventSourcePage is a page with a plain EventSource and no Herald code: it logs every
// event of the stream in order, and lets the browser reconnect by itself.
const eventSourcePage = `<!doctype html>
<meta charset="utf-8">
<title>A plain EventSource</title>
<script>
const events = [];
const es = new EventSource("/sse?channels=feed");
es.addEventListener("open", () => events.push({kind: "open"}));
for (const name of ["welcome", "resumed", "reset", "message"]) {
  es.addEventListener(name, (e) => events.push({kind: name, id: e.lastEventId, data: e.data}));
}
// An error event of the stream carries data; the browser's own (stream lost) does not.
es.addEventListener("error", (e) => events.push(typeof e.data === "string" ?
  {kind: "error", data: e.data} : {kind: "lost", state: es.readyState}));
</script>
`

// esEvent is one entry of the page's log.
type esEvent struct {
	Kind  string `json:"kind"`
	ID    string `json:"id"`
	Data  string `json:"data"`
	State int    `json:"state"`
}

// sseRequest is a GET /sse as a gateway received it.
type sseRequest struct {
	gateway     string
	lastEventID string
	hasHeader   bool
}

// sseRecorder serves eventSourcePage at /page.html beside a gateway, and records the
// GET /sse requests that the gateways receive.
type sseRecorder struct {
	mu   sync.Mutex
	reqs []sseRequest // mu protects reqs
}

// serving returns the wrapper of the handler of the gateway called name.
func (rec *sseRecorder) serving(name string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/page.html":
				w.Header().Set("Content-Type", "text/html; charset=utf-8")
				_, _ = io.WriteString(w, eventSourcePage)
				return
			case "/sse":
				_, has := r.Header["Last-Event-Id"]
				rec.mu.Lock()
				rec.reqs = append(rec.reqs, sseRequest{name, r.Header.Get("Last-Event-ID"), has})
				rec.mu.Unlock()
			}
			h.ServeHTTP(w, r)
		})
	}
}

func (rec *sseRecorder) requests() []sseRequest {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]sseRequest(nil), rec.reqs...)
}

// streamStory is what a page's log of its EventSource's events says.
type streamStory struct {
	messages   []frame  // the message events' data, in order
	lastBefore string   // the id of the last message before the stream's first reopening
	welcomes   []string // the node of each welcome
	resumes    []string // "resumed since N" or "reset since N", for each
	errors     []string // the code of each error event
}

// readStory decodes the page's log; a message event whose id is not its offset fails t.
func readStory(t *testing.T, log []esEvent) streamStory {
	t.Helper()
	var s streamStory
	reopened := false
	for _, e := range log {
		var f frame
		if e.Data != "" {
			if err := json.Unmarshal([]byte(e.Data), &f); err != nil {
				t.Fatalf("%s event data %q: %v", e.Kind, e.Data, err)
			}
		}
		switch e.Kind {
		case "open":
			reopened = len(s.messages) > 0
		case "welcome":
			s.welcomes = append(s.welcomes, f.str("node"))
		case "resumed", "reset":
			since, _ := f.num("since")
			s.resumes = append(s.resumes, fmt.Sprintf("%s since %d", e.Kind, since))
		case "error":
			s.errors = append(s.errors, f.str("code"))
		case "message":
			if off, ok := f.num("offset"); !ok || e.ID != fmt.Sprint(off) {
				t.Errorf("message %s: event id %q, want its offset %v", f.str("id"), e.ID, f["offset"])
			}
			s.messages = append(s.messages, f)
			if !reopened {
				s.lastBefore = e.ID
			}
		}
	}
	return s
}

// TestBrowserSSEEventSourceResumesOnAnotherGateway: a page with a plain EventSource
// reads a stream from gateway A on RabbitMQ; A drains and stops, and gateway B (its own
// stream consumer, the same exchange and stream) serves the same URL. Messages published
// before, during and after the switch reach the page each once, in order, with their
// offsets as event ids, by the browser's own Last-Event-ID alone.
func TestBrowserSSEEventSourceResumesOnAnotherGateway(t *testing.T) {
	amqpURL := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, amqpURL)
	b := newBrowser(t)

	rec := &sseRecorder{}
	a := startRabbitGateway(t, "gw-a", amqpURL, exchange, stream, "127.0.0.1:0", rec.serving("gw-a"))
	base := "http://" + a.addr
	p := openPage(t, b, "eventsource", base+"/page.html")
	logOnFailure(t, p, "events")
	p.waitFor("the welcome", `events.some((e) => e.kind === "welcome")`)
	count := func(kind string) string { return `events.filter((e) => e.kind === "` + kind + `").length` }

	// want is what the page must end with: each message's id and text, in publish order.
	type sent struct{ id, text string }
	var want []sent
	publish := func(phase string, send func(text string) string) {
		for i := range 5 {
			text := fmt.Sprintf("%s %d", phase, i)
			want = append(want, sent{send(text), text})
		}
	}
	viaGateway := func(text string) string {
		return publishTo(t, base, fmt.Sprintf(`{"channel":"feed","data":%q}`, text))
	}
	publish("before", viaGateway)
	p.waitFor("the messages before the switch", count("message")+` === 5`)

	a.stop(t)
	p.waitFor("the drain's error event", count("error")+` === 1`)
	// While no gateway serves: a backend publishes to the exchange itself.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	backend, err := producer.New(ctx, producer.Config{URL: amqpURL, Exchange: exchange})
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	defer backend.Close()
	publish("no gateway", func(text string) string {
		id, err := backend.Publish(ctx, producer.Message{Channel: "feed", Data: json.RawMessage(fmt.Sprintf("%q", text))})
		if err != nil {
			t.Fatalf("publish %q: %v", text, err)
		}
		return id
	})

	// Gateway B on the same address: A's URL, another gateway. Published through B as
	// soon as it listens (the page comes back up to its retry interval later), and after
	// the page is back.
	g := startRabbitGateway(t, "gw-b", amqpURL, exchange, stream, a.addr, rec.serving("gw-b"))
	publish("gateway b", viaGateway)
	p.waitFor("the stream open again", count("open")+` === 2 && es.readyState === 1`)
	publish("after", viaGateway)
	// The stream is one ordered sequence: a duplicate or a straggler would come before
	// the last message.
	p.waitFor("the last message", fmt.Sprintf(`events.some((e) => e.kind === "message" && JSON.parse(e.data).id === %s)`,
		jsString(want[len(want)-1].id)))

	var log []esEvent
	p.eval(`events`, &log)
	story := readStory(t, log)
	got, lastBefore := story.messages, story.lastBefore
	if strings.Join(story.errors, " ") != "going_away" {
		t.Errorf("the streams ended with error events %v, want one: going_away (the drain)", story.errors)
	}
	if len(got) != len(want) {
		t.Errorf("the page got %d messages, want %d: each once", len(got), len(want))
	}
	var prev int64 = -1
	for i, f := range got {
		off, _ := f.num("offset")
		if off <= prev {
			t.Errorf("message %d has offset %d after %d: want each once, in order", i, off, prev)
		}
		prev = off
		if i < len(want) && (f.str("id") != want[i].id || f.str("data") != want[i].text || f.str("channel") != "feed") {
			t.Errorf("message %d: got %s %q on %q, want %s %q on feed", i, f.str("id"), f.str("data"), f.str("channel"), want[i].id, want[i].text)
		}
	}
	if strings.Join(story.welcomes, " ") != "gw-a gw-b" || strings.Join(story.resumes, " ") != "resumed since "+lastBefore {
		t.Errorf("welcomes from %v, then %v: want gw-a, then gw-b resuming since %s", story.welcomes, story.resumes, lastBefore)
	}

	// Two streams: the first from A with no Last-Event-ID, the second from B with the
	// browser's Last-Event-ID, the last message's offset before the switch.
	reqs := rec.requests()
	if len(reqs) != 2 || reqs[0].gateway != "gw-a" || reqs[0].hasHeader || reqs[1].gateway != "gw-b" ||
		reqs[1].lastEventID != lastBefore || lastBefore == "" {
		t.Errorf("GET /sse requests %+v, want one to gw-a without Last-Event-ID, then one to gw-b with Last-Event-ID %q", reqs, lastBefore)
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_connections_accepted_total", "transport", "sse"); n != 1 {
		t.Errorf("gw-b accepted %v SSE streams, want 1", n)
	}
	var state int
	p.eval(`es.readyState`, &state)
	if state != 1 {
		t.Errorf("the EventSource is in state %d at the end, want 1 (open)", state)
	}
}

// nginxPath returns the nginx to run: it skips the test when there is none, except in
// CI (CI=true), where that is a failure.
func nginxPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"nginx", "/usr/sbin/nginx"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("nginx is not installed: CI must install Debian's nginx for the SSE fallback browser test")
	}
	t.Skip("nginx is not installed (apt-get install nginx); skipping")
	return ""
}

// freeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proxyConf is nginx's configuration for TestBrowserSSEFallbackBehindAProxy: a site that
// serves the page from html/ and proxies the gateway's paths, but passes /ws on without
// its Upgrade and Connection headers, as proxies that break WebSocket do. Everything
// (pid, logs, temporary files) is under the test's directory %[1]s; %[2]s is nginx's
// address, %[3]s the gateway's, %[4]s the user line.
const proxyConf = `daemon off;
worker_processes 1;
%[4]s
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 64; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    types { text/html html; }
    server {
        listen %[2]s;
        root %[1]s/html;
        # The proxy that refuses WebSocket: the upgrade is dropped, the gateway gets a
        # plain GET.
        location = /ws {
            proxy_pass http://%[3]s;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade "";
            proxy_set_header Connection "";
        }
        # The event stream: unbuffered, each event passed on as it comes.
        location = /sse {
            proxy_pass http://%[3]s;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }
        location /api/ {
            proxy_pass http://%[3]s;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
        }
        location = /herald.js {
            proxy_pass http://%[3]s;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
        }
    }
}
`

// startNginx runs nginx with proxyConf in front of the gateway at gwAddr, as the
// current user, with page as html/index.html, and returns its base URL and its
// directory. It is stopped at the end of the test.
func startNginx(t *testing.T, gwAddr, page string) (base, dir string) {
	t.Helper()
	bin := nginxPath(t)
	dir = t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "html"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "html", "index.html"), []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	// Run as root, nginx's workers would become "nobody"; they are to stay the current user.
	userLine := ""
	if os.Geteuid() == 0 {
		u, err := user.Current()
		if err != nil {
			t.Fatal(err)
		}
		grp, err := user.LookupGroupId(u.Gid)
		if err != nil {
			t.Fatal(err)
		}
		userLine = fmt.Sprintf("user %s %s;", u.Username, grp.Name)
	}
	addr := freeAddr(t)
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, proxyConf, dir, addr, gwAddr, userLine), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log")}
	if out, err := exec.Command(bin, append([]string{"-t"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	out, err := os.Create(filepath.Join(dir, "nginx.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nginx: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// SIGTERM: nginx's master stops its worker and exits (a SIGKILL would orphan it).
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		out.Close()
		if t.Failed() {
			for _, name := range []string{"nginx.out", "error.log", "access.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, name))
				t.Logf("nginx %s:\n%s", name, b)
			}
		}
	})
	base = "http://" + addr
	gwtest.WaitFor(t, "nginx to answer", func() bool {
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited:\n%s", b)
		default:
		}
		resp, err := http.Get(base + "/index.html")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base, dir
}

// heraldPage is a page that connects with herald.js, as an application would, and keeps
// what it sees for the test: its states with the transport of each, and its messages.
const heraldPage = `<!doctype html>
<meta charset="utf-8">
<title>herald.js behind a proxy</title>
<script type="module">
import { Herald } from "/herald.js";
const token = new URLSearchParams(location.search).get("token");
const h = new Herald("/ws", { channels: ["news"], token });
window.h = h;
window.states = [];
window.got = [];
h.addEventListener("state", (e) => states.push({ state: e.detail.state, transport: h.transport }));
h.addEventListener("message", (e) => got.push(e.detail));
</script>
`

// TestBrowserSSEFallbackBehindAProxy: herald.js on a page behind an nginx that drops the
// WebSocket upgrade fails its WebSocket opens, falls back to SSE by itself after
// sseFallbackAfter (3) of them, receives a backend's message and publishes its own
// through POST /api/client/publish, all same-origin through nginx.
func TestBrowserSSEFallbackBehindAProxy(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret}}, nil)
	base, dir := startNginx(t, g.http.Listener.Addr().String(), heraldPage)
	b := newBrowser(t)
	tok := hs(t, "dana", time.Hour, claims{"channels": []string{"news"}, "publish": []string{"news"}})
	p := openPage(t, b, "herald.js", base+"/index.html?token="+tok)
	logOnFailure(t, p, "{states: window.states, got: window.got}")
	p.waitFor("herald.js open on SSE", `window.h && h.state === "open" && h.transport === "sse"`)

	var states []struct {
		State     string `json:"state"`
		Transport string `json:"transport"`
	}
	p.eval(`states`, &states)
	for _, s := range states {
		if s.State == "open" && s.Transport != "sse" {
			t.Errorf("herald.js was open on %s, want WebSocket never to get through the proxy (states %+v)", s.Transport, states)
		}
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_handshakes_refused_total", "reason", "bad_handshake"); n != 3 {
		t.Errorf("the gateway refused %v WebSocket handshakes without Upgrade, want 3 (sseFallbackAfter) before the fall back", n)
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_connections_accepted_total", "transport", "ws"); n != 0 {
		t.Errorf("the gateway accepted %v WebSocket connections through the proxy, want 0", n)
	}

	// A backend's message, through nginx's /api/; then the page's own, with its token.
	backendID := publishTo(t, base, `{"channel":"news","data":{"text":"from the backend"}}`)
	p.waitFor("the backend's message", `got.length === 1`)
	var ack struct {
		ID string `json:"id"`
	}
	p.eval(`h.publish("news", {text: "from the page"})`, &ack)
	if ack.ID == "" {
		t.Fatal("the page's publish was not acked with an id")
	}
	p.waitFor("the page's own message", `got.length === 2`)
	var got []struct {
		ID     string          `json:"id"`
		Offset int64           `json:"offset"`
		From   string          `json:"from"`
		Data   json.RawMessage `json:"data"`
	}
	p.eval(`got`, &got)
	if len(got) != 2 || got[0].ID != backendID || string(got[0].Data) != `{"text":"from the backend"}` || got[0].From != "" ||
		got[1].ID != ack.ID || string(got[1].Data) != `{"text":"from the page"}` || got[1].From != "dana" ||
		got[1].Offset <= got[0].Offset {
		t.Errorf("the page got %+v, want the backend's message %s, then its own %s from dana, in order", got, backendID, ack.ID)
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_messages_published_total", "source", "client_http"); n != 1 {
		t.Errorf("published{source=client_http}: %v, want 1 (the page's POST)", n)
	}
	// The page's requests went through nginx: its access log has the refused WebSocket
	// opens and the POST.
	access, err := os.ReadFile(filepath.Join(dir, "access.log"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if n := strings.Count(string(access), `"GET /ws?`); n != 3 {
		t.Errorf("nginx passed on %d WebSocket opens, want 3", n)
	}
	if !strings.Contains(string(access), `"POST /api/client/publish HTTP/1.1" 200`) {
		t.Errorf("nginx's access log has no POST /api/client/publish answered 200:\n%s", access)
	}
}
