package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/amqptest"
)

// The tests of gateways on the private 3-node RabbitMQ cluster (.ci/cluster; see
// producer/amqptest/cluster.go): node faults under load, TLS to the nodes.

// envClusterFaults turns the cluster fault tests on: they stop, kill and freeze nodes of
// the private cluster for several minutes. .ci/test sets it, in a step of its own after
// the other tests.
const envClusterFaults = "HERALD_CLUSTER_FAULT_TESTS"

// The load of each fault: per gateway, clients and publishers of each kind.
const (
	faultClientsPerGateway = 20
	faultPublishEvery      = 40 * time.Millisecond // each of 4 publishers: 100 msg/s in all
)

// clusterFault is one fault of TestFaultCluster: what it does to the cluster, given the
// node that leads the stream, and the longest a client may go without a delivery.
type clusterFault struct {
	name    string
	maxGap  time.Duration
	inflict func(t *testing.T, c *amqptest.TestCluster, leader int)
}

// faultFigures is one row of the fault table.
type faultFigures struct {
	fault                    string
	published, refused       int
	receivedMin, receivedMax int
	lost, duplicated         int
	longestGap               time.Duration
	leaderBefore             int
	leaderAfter              string
	unreadyA                 time.Duration
	reconnects               int
	took                     time.Duration
}

// TestFaultCluster loses one node of three in each of five ways while two gateways serve
// 20 clients each and four publishers (HTTP and WebSocket, on both gateways, retrying a
// refused publish with the same id on either gateway) publish 100 messages a second.
// Gateway A lists node 1 first, B node 2; the stream's leader starts on node 3. Every
// client must get every acknowledged message once, in stream order, keep its socket, and
// never wait more than 10s (15s for a frozen node) for a delivery. The node stopped for
// good goes last; the cluster is restored when the test ends.
func TestFaultCluster(t *testing.T) {
	if os.Getenv(envClusterFaults) != "1" {
		t.Skipf("stops, kills and freezes nodes of the private cluster for minutes: set %s=1 (.ci/test does, in a step of its own)", envClusterFaults)
	}
	c := amqptest.Cluster(t)
	faults := []clusterFault{
		{"the leader's node stopped, started again", 10 * time.Second, func(t *testing.T, c *amqptest.TestCluster, leader int) {
			stopStart(t, c, leader, 8*time.Second)
		}},
		{"A's first node (node 1) stopped, started again", 10 * time.Second, func(t *testing.T, c *amqptest.TestCluster, _ int) {
			stopStart(t, c, 1, 8*time.Second)
		}},
		{"the leader's node killed (SIGKILL), started again", 10 * time.Second, func(t *testing.T, c *amqptest.TestCluster, leader int) {
			must(t, c.KillNode(leader))
			time.Sleep(8 * time.Second)
			must(t, c.StartNode(leader))
		}},
		{"A's first node (node 1) frozen (SIGSTOP) for 20s", 15 * time.Second, func(t *testing.T, c *amqptest.TestCluster, _ int) {
			must(t, c.FreezeNode(1))
			time.Sleep(20 * time.Second)
			must(t, c.ThawNode(1))
		}},
		{"A's first node (node 1) stopped for good", 10 * time.Second, func(t *testing.T, c *amqptest.TestCluster, _ int) {
			must(t, c.StopNode(1))
			time.Sleep(10 * time.Second)
		}},
	}
	var table []faultFigures
	start := time.Now()
	for i, f := range faults {
		ok := t.Run(fmt.Sprintf("F%d", i+1), func(t *testing.T) {
			fig := runClusterFault(t, c, f, i == len(faults)-1)
			fig.fault = f.name
			table = append(table, fig)
		})
		if !ok {
			break
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "cluster faults, %v in all:\n| fault | published (refused, retried) | received per client | lost | duplicated | longest gap | leader before -> after | A unready | client reconnects | took |\n|---|---|---|---|---|---|---|---|---|---|\n",
		time.Since(start).Round(time.Second))
	for _, r := range table {
		fmt.Fprintf(&b, "| %s | %d (%d) | %d..%d | %d | %d | %v | node %d -> %s | %v | %d | %v |\n", r.fault, r.published, r.refused,
			r.receivedMin, r.receivedMax, r.lost, r.duplicated, r.longestGap.Round(time.Millisecond), r.leaderBefore, r.leaderAfter,
			r.unreadyA.Round(100*time.Millisecond), r.reconnects, r.took.Round(time.Second))
	}
	t.Log(b.String())
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// stopStart stops node n, waits, and starts it again.
func stopStart(t *testing.T, c *amqptest.TestCluster, n int, away time.Duration) {
	must(t, c.StopNode(n))
	time.Sleep(away)
	must(t, c.StartNode(n))
}

// runClusterFault runs one fault under load and returns its figures. last says the
// fault leaves a node down: the cluster is not waited for whole afterwards.
func runClusterFault(t *testing.T, c *amqptest.TestCluster, f clusterFault, last bool) faultFigures {
	began := time.Now()
	exchange, stream := c.Names(t)
	// The stream's leader on node 3, as a client-local declare through node 3 puts it;
	// the gateways declare it with the same arguments.
	declareStreamOn(t, c.URLs[2], exchange, stream)
	must(t, c.WaitMembers(stream, []int{1, 2, 3}, 60*time.Second))
	extra := []string{"--stream-leader-locator", "client-local", "--log-level", "info"}
	a := startGateway(t, "gw-a", strings.Join([]string{c.URLs[0], c.URLs[1], c.URLs[2]}, ","), exchange, stream, extra...)
	b := startGateway(t, "gw-b", strings.Join([]string{c.URLs[1], c.URLs[2], c.URLs[0]}, ","), exchange, stream, extra...)
	warmUp(t, a, b)
	gws := []*proc{a, b}
	homeFirst := func(home *proc) func() []*proc {
		return func() []*proc {
			if home == a {
				return []*proc{a, b}
			}
			return []*proc{b, a}
		}
	}
	var clients []*wsClient
	for i := range 2 * faultClientsPerGateway {
		home := gws[i%2]
		cl := newClient(t, fmt.Sprintf("client%d@%s", i, home.name), "channels=x", homeFirst(home))
		cl.mu.Lock()
		cl.strict = true
		cl.mu.Unlock()
		clients = append(clients, cl)
	}
	pubs := []*steadyPublisher{
		startNamedPublisher(t, "http-a", faultPublishEvery, homeFirst(a)),
		startNamedPublisher(t, "http-b", faultPublishEvery, homeFirst(b)),
	}
	wsPubs := []*wsPublisher{
		startWSPublisher(t, "ws-a", faultPublishEvery, homeFirst(a)),
		startWSPublisher(t, "ws-b", faultPublishEvery, homeFirst(b)),
	}
	pubs[0].waitMore(t, 50, 15*time.Second)

	leader, err := c.Leader(stream)
	must(t, err)
	watch := watchReady(a)
	t.Logf("%s: the stream's leader is on node %d; inflicting the fault", f.name, leader)
	faultAt := time.Now()
	f.inflict(t, c, leader)
	t.Logf("%s: fault over after %v", f.name, time.Since(faultAt).Round(100*time.Millisecond))
	after := "?" // the leader's node after the fault
	if n, err := c.Leader(stream); err == nil {
		after = strconv.Itoa(n)
	}
	if !last {
		// A replica still restarting would slow the next fault's election.
		must(t, c.WaitMembers(stream, []int{1, 2, 3}, 90*time.Second))
	}
	// Traffic after the fault, through both gateways.
	for _, p := range pubs {
		p.waitMore(t, 50, 30*time.Second)
	}
	for _, p := range wsPubs {
		p.waitMore(t, 50, 30*time.Second)
	}
	unready := watch()
	for _, p := range pubs {
		p.halt()
	}
	for _, p := range wsPubs {
		p.halt()
	}

	var accepted []string
	refused := 0
	for _, p := range pubs {
		ids, r := p.ids()
		accepted, refused = append(accepted, ids...), refused+r
	}
	for _, p := range wsPubs {
		ids, r := p.ids()
		accepted, refused = append(accepted, ids...), refused+r
	}
	if n := len(slices.Compact(slices.Sorted(slices.Values(accepted)))); n != len(accepted) {
		t.Fatalf("%d ids accepted, %d distinct: the publishers' ids collide", len(accepted), n)
	}
	fig := faultFigures{published: len(accepted), refused: refused, leaderBefore: leader, leaderAfter: after, unreadyA: unready,
		receivedMin: -1}
	offsets := map[string]int64{} // id -> offset, the same at every client
	for _, cl := range clients {
		cl.waitFor(t, accepted, 60*time.Second)
		got := cl.deliveries()
		n, gap := cl.check(t, accepted)
		lost, dup := lostAndDuplicated(got, accepted)
		fig.lost, fig.duplicated = fig.lost+lost, fig.duplicated+dup
		if fig.receivedMin < 0 || n < fig.receivedMin {
			fig.receivedMin = n
		}
		fig.receivedMax = max(fig.receivedMax, n)
		fig.longestGap = max(fig.longestGap, gap)
		if gap > f.maxGap {
			t.Errorf("%s: %v without a delivery, want at most %v", cl.name, gap.Round(time.Millisecond), f.maxGap)
		}
		reconnects, codes := cl.stats()
		fig.reconnects += reconnects
		if reconnects > 0 {
			t.Errorf("%s: reconnected %d times (close codes %v): a broker node's loss must not cost a client its socket", cl.name, reconnects, codes)
		}
		for _, d := range got {
			if off, seen := offsets[d.ID]; seen && off != d.Offset {
				t.Errorf("%s: message %s at offset %d, at %d for another client", cl.name, d.ID, d.Offset, off)
			}
			offsets[d.ID] = d.Offset
		}
	}
	fig.took = time.Since(began)
	t.Logf("%s: %d published (%d refused and retried), received per client %d..%d, lost %d, duplicated %d, longest gap %v, leader node %d -> node %s, A unready %v",
		f.name, fig.published, fig.refused, fig.receivedMin, fig.receivedMax, fig.lost, fig.duplicated,
		fig.longestGap.Round(time.Millisecond), leader, after, unready.Round(100*time.Millisecond))
	return fig
}

// lostAndDuplicated counts the accepted ids a client did not get, and the extra copies
// it got.
func lostAndDuplicated(got []delivery, accepted []string) (lost, dup int) {
	seen := make(map[string]int, len(got))
	for _, d := range got {
		seen[d.ID]++
	}
	for _, id := range accepted {
		switch n := seen[id]; {
		case n == 0:
			lost++
		case n > 1:
			dup += n - 1
		}
	}
	return lost, dup
}

// declareStreamOn declares exchange and stream through url with the arguments the test
// gateways declare them with (their defaults, --stream-max-bytes 100 MB and
// --stream-leader-locator client-local), so that the leader is on that node.
func declareStreamOn(t *testing.T, url, exchange, stream string) {
	t.Helper()
	ch := amqptest.Channel(t, url)
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(stream, true, false, false, false, amqp.Table{
		"x-queue-type": "stream", "x-max-age": "86400s", "x-max-length-bytes": int64(104857600),
		"x-initial-cluster-size": int64(3), "x-queue-leader-locator": "client-local",
	}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(stream, "", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
}

// watchReady polls p's /readyz until the returned function is called, which returns how
// long p answered anything but 200 meanwhile.
func watchReady(p *proc) func() time.Duration {
	stop, done := make(chan struct{}), make(chan time.Duration, 1)
	go func() {
		var unready time.Duration
		const every = 100 * time.Millisecond
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				done <- unready
				return
			case <-t.C:
			}
			if !p.ready() {
				unready += every
			}
		}
	}()
	return func() time.Duration { close(stop); return <-done }
}

// wsPublisher publishes to channel x over WebSocket connections to the gateways, at a
// steady rate, each message with an id of its own: a publish answered with an error (or
// not at all within 10s) is retried with the same id, on the next gateway, until one
// acks it, as a client that must not lose a message does.
type wsPublisher struct {
	name string
	mu   sync.Mutex // protects accepted and refused
	// accepted lists the ids acked, in order of their acks.
	accepted []string
	refused  int
	stop     context.CancelFunc
	done     chan struct{}
}

// wsPubConn is one publishing connection to a gateway; answers maps refs to waiters.
type wsPubConn struct {
	ws      *websocket.Conn
	mu      sync.Mutex // protects answers and ws writes
	answers map[string]chan map[string]any
}

func startWSPublisher(t *testing.T, name string, every time.Duration, gateways func() []*proc) *wsPublisher {
	ctx, cancel := context.WithCancel(context.Background())
	p := &wsPublisher{name: name, stop: cancel, done: make(chan struct{})}
	var conns []*wsPubConn
	for _, g := range gateways() {
		ws, _, err := websocket.DefaultDialer.Dial("ws://"+g.addr+"/ws?user="+name, nil)
		if err != nil {
			t.Fatalf("%s: dial %s: %v", name, g.name, err)
		}
		c := &wsPubConn{ws: ws, answers: map[string]chan map[string]any{}}
		go c.read()
		conns = append(conns, c)
	}
	go func() {
		defer close(p.done)
		defer func() {
			for _, c := range conns {
				_ = c.ws.Close()
			}
		}()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for n := 0; ; n++ {
			id := fmt.Sprintf("%s-%d", name, n)
			for try := 0; ; try++ {
				if ctx.Err() != nil {
					return
				}
				if conns[try%len(conns)].publish(id, n) {
					break
				}
				p.mu.Lock()
				p.refused++
				p.mu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
			p.mu.Lock()
			p.accepted = append(p.accepted, id)
			p.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(p.halt)
	return p
}

// publish publishes message n with id and reports whether the gateway acked it.
func (c *wsPubConn) publish(id string, n int) bool {
	answer := make(chan map[string]any, 1)
	c.mu.Lock()
	c.answers[id] = answer
	err := c.ws.WriteJSON(map[string]any{"op": "publish", "channel": "x", "id": id, "ref": id, "data": map[string]int{"n": n}})
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.answers, id)
		c.mu.Unlock()
	}()
	if err != nil {
		return false
	}
	select {
	case f := <-answer:
		return f["op"] == "ack" && f["id"] == id
	case <-time.After(10 * time.Second):
		return false
	}
}

// read hands each ack and error to the publish waiting for it, until the connection ends.
func (c *wsPubConn) read() {
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		var f map[string]any
		if json.Unmarshal(data, &f) != nil {
			continue
		}
		ref, _ := f["ref"].(string)
		c.mu.Lock()
		if ch, ok := c.answers[ref]; ok && (f["op"] == "ack" || f["op"] == "error") {
			ch <- f
			delete(c.answers, ref)
		}
		c.mu.Unlock()
	}
}

func (p *wsPublisher) halt() {
	p.stop()
	<-p.done
}

func (p *wsPublisher) ids() ([]string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.accepted), p.refused
}

func (p *wsPublisher) waitMore(t *testing.T, n int, within time.Duration) {
	t.Helper()
	p.mu.Lock()
	target := len(p.accepted) + n
	p.mu.Unlock()
	deadline := time.Now().Add(within)
	for {
		p.mu.Lock()
		got := len(p.accepted)
		p.mu.Unlock()
		if got >= target {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %d more acked within %v", p.name, n, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCanaryUnreadyOnAStalledPath: a gateway whose stream is unbound from the exchange
// (every connection stays up, nothing goes round) answers /readyz 503 with the reason
// within the canary timeout, and is ready again by itself: it binds the stream again.
func TestCanaryUnreadyOnAStalledPath(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	const timeout = 3 * time.Second
	g := startGateway(t, "gw-canary", url, exchange, stream, "--canary-interval", "500ms", "--canary-timeout", timeout.String())
	warmUp(t, g)
	// The first canary back.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(readyBody(t, g), "round_trip_ms") {
		if time.Now().After(deadline) {
			t.Fatalf("no canary back within 10s: %s", readyBody(t, g))
		}
		time.Sleep(100 * time.Millisecond)
	}
	ch := amqptest.Channel(t, url)
	if err := ch.QueueUnbind(stream, "", exchange, nil); err != nil {
		t.Fatal(err)
	}
	unbound := time.Now()
	for g.ready() {
		if time.Since(unbound) > timeout+3*time.Second {
			t.Fatalf("still ready %v after the unbind (canary timeout %v)", time.Since(unbound), timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	unreadyAfter := time.Since(unbound)
	body := readyBody(t, g)
	if !strings.Contains(body, "no canary came back") {
		t.Errorf("/readyz while stalled: got %s, want the reason", body)
	}
	g.waitReady(t, 15*time.Second)
	t.Logf("unready %v after the unbind (timeout %v), ready again %v after it", unreadyAfter.Round(time.Millisecond),
		timeout, time.Since(unbound).Round(time.Millisecond))
	// Messages go round again.
	c := newClient(t, "after", "", func() []*proc { return []*proc{g} })
	id, status, err := httpPublish(g, `{"data":"after"}`)
	if err != nil || status != http.StatusAccepted {
		t.Fatalf("publish after the recovery: %d %v", status, err)
	}
	c.waitFor(t, []string{id}, 10*time.Second)
	if m, ok := scrapeMetric(t, g, "herald_bus_stalls_total"); !ok || m < 1 {
		t.Errorf("herald_bus_stalls_total: got %v (%v), want at least 1", m, ok)
	}
}

// readyBody returns p's /readyz answer.
func readyBody(t *testing.T, p *proc) string {
	t.Helper()
	resp, err := http.Get(p.url("/readyz"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// TestClusterTLS: a gateway and herald-publish reach a node over amqps:// with the CA
// and a client certificate from flags, the server name checked; with another CA the
// gateway refuses to start.
func TestClusterTLS(t *testing.T) {
	c := amqptest.Cluster(t)
	if c.TLSURL == "" {
		t.Fatal("the test cluster has no TLS listener")
	}
	exchange, stream := c.Names(t)
	tlsFlags := []string{"--amqp-ca-file", c.CAFile, "--amqp-cert-file", c.CertFile, "--amqp-key-file", c.KeyFile}
	g := startGateway(t, "gw-tls", c.TLSURL, exchange, stream, tlsFlags...)
	warmUp(t, g)
	cl := newClient(t, "tls", "channels=t", func() []*proc { return []*proc{g} })
	out, err := runPublish("-url", c.TLSURL, "-exchange", exchange, "-channel", "t",
		"-ca-file", c.CAFile, "-cert-file", c.CertFile, "-key-file", c.KeyFile, `{"over":"tls"}`)
	if err != nil {
		t.Fatalf("herald-publish over TLS: %v\n%s", err, out)
	}
	cl.waitFor(t, []string{strings.TrimSpace(out)}, 10*time.Second)

	// A CA that did not sign the node's certificate: the handshake is refused.
	other := t.TempDir() + "/other-ca.pem"
	if err := os.WriteFile(other, otherCA(t), 0o600); err != nil {
		t.Fatal(err)
	}
	ex2, st2 := c.Names(t)
	code, log := runGatewayToExit(t, "--addr", "127.0.0.1:0", "--amqp-url", c.TLSURL, "--exchange", ex2, "--stream", st2,
		"--amqp-ca-file", other, "--log-format", "json")
	if code == 0 || !strings.Contains(log, "certificate") {
		t.Errorf("gateway with another CA: exit %d, log %s; want a failed start naming the certificate", code, log)
	}
	if strings.Contains(log, "guest:guest") {
		t.Errorf("the gateway's log shows a password: %s", log)
	}
	if out, err := runPublish("-url", c.TLSURL, "-exchange", exchange, "-ca-file", other, "-timeout", "5s", `1`); err == nil {
		t.Errorf("herald-publish with another CA: got success %s, want a refusal", out)
	}
}

// runPublish runs herald-publish with args, bounded to 30s, and returns its standard
// output (and its standard error, on failure).
func runPublish(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.publish, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// runGatewayToExit runs herald-gateway with args until it exits (at most 60s) and
// returns its exit code and its log.
func runGatewayToExit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.gateway, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), stderr.String()
	default:
		t.Fatalf("run herald-gateway: %v", err)
		return -1, ""
	}
}

// otherCA returns a CA certificate, in PEM, that signed nothing of the test cluster's.
func otherCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "not the cluster's CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
