package amqptest

// The private 3-node RabbitMQ cluster of .ci/cluster (issue 17), for tests of node lists,
// failover and replicated streams.
//
// .ci/cluster start writes an env file ($HERALD_CLUSTER_DIR/env, by default
// $TMPDIR/herald-cluster-$UID/env) with the nodes' URLs; a variable set in the environment
// wins over the file's. Cluster(t) finds the cluster there, fails the test when it is
// missing and $CI is "true" (skips it otherwise), and holds the cluster for that test
// alone: tests of other packages (other test binaries) that call Cluster wait for it, so
// that one test's fault never lands in another's run.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Variables of the env file (and of the environment, which wins).
const (
	// EnvCluster holds the nodes' AMQP URLs, comma-separated, node 1 first.
	EnvCluster = "HERALD_TEST_CLUSTER"
	// EnvClusterDir is the cluster's folder (where .ci/cluster keeps its env file).
	EnvClusterDir = "HERALD_CLUSTER_DIR"
)

const (
	// clusterLockWait bounds the wait for a cluster held by another test: the longest
	// fault test takes a few minutes.
	clusterLockWait = 15 * time.Minute
	// ctlTimeout bounds one .ci/cluster command (a node's boot is bounded by 120 s there,
	// a join adds a few seconds).
	ctlTimeout = 4 * time.Minute
	// outputLimit bounds the part of a command's output quoted in an error.
	outputLimit = 4000
)

// TestCluster is the private RabbitMQ cluster, held by one test. Nodes are numbered 1 to
// 3, as .ci/cluster numbers them. The fields are set by Cluster and only read after; the
// methods may be called from any goroutine.
type TestCluster struct {
	// URLs are the nodes' AMQP URLs: URLs[0] is node 1.
	URLs []string
	// TLSURL is node 1's amqps:// URL; its host (localhost) is the server name checked.
	TLSURL string
	// CAFile is the PEM file of the CA that signed the nodes' and the client's certificates.
	CAFile string
	// CertFile and KeyFile are a client certificate and its key, signed by that CA.
	CertFile, KeyFile string
	// MetricsURLs are the nodes' rabbitmq_prometheus endpoints: MetricsURLs[0] is node 1's.
	MetricsURLs []string

	dir string // the cluster's folder; "" when only the environment named the cluster
	ctl string // path of .ci/cluster; "" when not found

	mu      sync.Mutex // protects touched
	touched bool       // a node was stopped, killed or frozen: restore at the end
}

// Cluster returns the private cluster after checking that its nodes answer, and holds it
// for t until t ends. When the cluster is missing it fails t if $CI is "true" and skips t
// otherwise. A node that does not answer (left down by an earlier test that crashed) is
// brought back with `.ci/cluster start`. When t ends, the nodes t stopped, killed or froze
// are brought back the same way, then the cluster is released. Call it once per top-level
// test and hand the result to subtests: a second call from the same test waits for the
// first one's release, that is for ever (until clusterLockWait fails it).
func Cluster(t testing.TB) *TestCluster {
	t.Helper()
	env := clusterEnv()
	c := &TestCluster{
		TLSURL:   env["HERALD_TEST_CLUSTER_TLS_URL"],
		CAFile:   env["HERALD_TEST_CLUSTER_CA"],
		CertFile: env["HERALD_TEST_CLUSTER_CERT"],
		KeyFile:  env["HERALD_TEST_CLUSTER_KEY"],
		dir:      env[EnvClusterDir],
		ctl:      env["HERALD_CLUSTER_CTL"],
	}
	c.URLs = splitList(env[EnvCluster])
	c.MetricsURLs = splitList(env["HERALD_TEST_CLUSTER_METRICS"])
	if len(c.URLs) == 0 {
		missing(t, "no RabbitMQ test cluster: %s is unset and there is no env file at %s (run .ci/cluster start)",
			EnvCluster, filepath.Join(clusterDir(), "env"))
	}
	if c.ctl == "" {
		c.ctl = findCtl()
	}
	if c.dir != "" {
		c.lock(t)
	}

	var down []int
	for i, url := range c.URLs {
		if !answers(url) {
			down = append(down, i+1)
		}
	}
	if len(down) == len(c.URLs) {
		missing(t, "the RabbitMQ test cluster (%s) does not answer (run .ci/cluster start)", env[EnvCluster])
	}
	if len(down) > 0 {
		t.Logf("amqptest: cluster nodes %v do not answer: .ci/cluster start", down)
		if _, err := c.run("start"); err != nil {
			t.Fatalf("amqptest: cluster nodes %v are down and cannot be restarted: %v", down, err)
		}
	}
	t.Cleanup(func() {
		c.mu.Lock()
		touched := c.touched
		c.mu.Unlock()
		if !touched {
			return
		}
		if _, err := c.run("start"); err != nil {
			t.Errorf("amqptest: restoring the cluster after the test: %v", err)
		}
	})
	return c
}

// missing fails the test when $CI is "true" and skips it otherwise.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format+" (CI=true: failing, not skipping)", args...)
	}
	t.Skipf(format+" (set CI=true to fail instead)", args...)
}

// answers tells whether an AMQP handshake with url completes within 5 s (a frozen node
// accepts the TCP connection but never answers).
func answers(url string) bool {
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// clusterDir is the folder .ci/cluster uses by default, or $HERALD_CLUSTER_DIR.
func clusterDir() string {
	if d := os.Getenv(EnvClusterDir); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "herald-cluster-"+strconv.Itoa(os.Getuid()))
}

// clusterEnv reads the env file (KEY=VALUE lines, # comments) if there is one, and lets
// the environment's HERALD_* variables win over it.
func clusterEnv() map[string]string {
	env := map[string]string{}
	if data, err := os.ReadFile(filepath.Join(clusterDir(), "env")); err == nil {
		env = parseEnv(data)
	}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "HERALD_") && v != "" {
			env[k] = v
		}
	}
	return env
}

// parseEnv parses KEY=VALUE lines; blank lines and lines starting with # are skipped.
func parseEnv(data []byte) map[string]string {
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			env[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return env
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// findCtl looks for .ci/cluster in the working directory (a package's folder during go
// test) and its parents.
func findCtl() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		p := filepath.Join(dir, ".ci", "cluster")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// lock takes the cluster's test lock (an flock on a file of its folder, which the kernel
// releases if the test binary dies) and releases it when t ends. Bounded by
// clusterLockWait.
func (c *TestCluster) lock(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(c.dir, "test.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		missing(t, "the RabbitMQ test cluster's folder %s is not usable: %v", c.dir, err)
	}
	start := time.Now()
	next := start.Add(30 * time.Second)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			t.Fatalf("amqptest: lock the test cluster: %v", err)
		}
		if time.Since(start) > clusterLockWait {
			_ = f.Close()
			t.Fatalf("amqptest: the test cluster stayed held by another test for %v (a test that calls Cluster twice waits for itself)", clusterLockWait)
		}
		if time.Now().After(next) {
			t.Logf("amqptest: waiting %v for the test cluster, held by another test", time.Since(start).Round(time.Second))
			next = next.Add(30 * time.Second)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(func() { _ = f.Close() }) // registered first: runs after the restore
}

// run runs .ci/cluster with args and returns its standard output.
func (c *TestCluster) run(args ...string) (string, error) {
	if c.ctl == "" {
		return "", fmt.Errorf("amqptest: cluster %s: .ci/cluster not found (set HERALD_CLUSTER_CTL)", strings.Join(args, " "))
	}
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.ctl, args...)
	if c.dir != "" {
		cmd.Env = append(os.Environ(), EnvClusterDir+"="+c.dir)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("amqptest: .ci/cluster %s: %w: %s", strings.Join(args, " "), err, bounded(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// bounded returns s if it is at most outputLimit bytes long, else its start (where the
// script says what failed) and its end (the node's log tail).
func bounded(s string) string {
	s = strings.TrimSpace(s)
	if len(s) <= outputLimit {
		return s
	}
	return s[:outputLimit/4] + "\n...\n" + s[len(s)-outputLimit*3/4:]
}

// node runs a fault command on node n, marking the cluster for restore at the end.
func (c *TestCluster) node(cmd string, n int) error {
	if n < 1 || n > len(c.URLs) {
		return fmt.Errorf("amqptest: cluster %s: no node %d", cmd, n)
	}
	if cmd != "start-node" && cmd != "thaw-node" {
		c.mu.Lock()
		c.touched = true
		c.mu.Unlock()
	}
	_, err := c.run(cmd, strconv.Itoa(n))
	return err
}

// StopNode stops node n gracefully (its whole VM) and returns once it has exited.
func (c *TestCluster) StopNode(n int) error { return c.node("stop-node", n) }

// StartNode starts node n again and returns once it runs and answers AMQP; it rejoins
// the cluster from its own data.
func (c *TestCluster) StartNode(n int) error { return c.node("start-node", n) }

// KillNode kills node n's VM with SIGKILL and returns once it has gone.
func (c *TestCluster) KillNode(n int) error { return c.node("kill-node", n) }

// FreezeNode stops node n's VM with SIGSTOP: its sockets stay open, nothing answers, as
// a hung VM or a network that drops packets.
func (c *TestCluster) FreezeNode(n int) error { return c.node("freeze-node", n) }

// ThawNode resumes node n's VM with SIGCONT.
func (c *TestCluster) ThawNode(n int) error { return c.node("thaw-node", n) }

// Leader returns the number of the node that leads stream (the stream's writer).
func (c *TestCluster) Leader(stream string) (int, error) {
	out, err := c.run("leader", stream)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(out)
	if err != nil {
		return 0, fmt.Errorf("amqptest: cluster leader %s: got %q, want a node number", stream, out)
	}
	return n, nil
}

// Members returns the numbers of the nodes where stream has a member that is online,
// in increasing order. It fails while the stream's leader is on a frozen node (RabbitMQ
// asks that node).
func (c *TestCluster) Members(stream string) ([]int, error) {
	out, err := c.run("members", stream)
	if err != nil {
		return nil, err
	}
	var nodes []int
	for _, f := range strings.Fields(out) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("amqptest: cluster members %s: got %q, want node numbers", stream, out)
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// WaitMembers waits until stream's online members are want (in increasing order), for
// at most timeout. A fault test waits so before its next fault: a replica that is still
// restarting delays the next leader election (measured: 12 s instead of 5 s).
func (c *TestCluster) WaitMembers(stream string, want []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := c.Members(stream)
		if err == nil && slices.Equal(got, want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("amqptest: online members of %s after %v: got %v (%v), want %v", stream, timeout, got, err, want)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// URLList returns the nodes' URLs as one comma-separated list, node 1 first: the form
// that --amqp-url takes.
func (c *TestCluster) URLList() string { return strings.Join(c.URLs, ",") }

// TLSConfig returns a TLS configuration that trusts the cluster's CA and, when
// clientCert is true, presents the client certificate. The server name is left empty:
// amqp091-go takes it from the URL's host.
func (c *TestCluster) TLSConfig(t testing.TB, clientCert bool) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		t.Fatalf("amqptest: read the cluster's CA: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("amqptest: no certificate in %s", c.CAFile)
	}
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if clientCert {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			t.Fatalf("amqptest: load the cluster's client certificate: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// Names returns an exchange and a stream name unique to this test run, as Names does,
// and deletes both when the test ends through the first node that answers (the test may
// have left node 1 down; its restore runs after this deletion).
func (c *TestCluster) Names(t testing.TB) (exchange, stream string) {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	base := "herald-test." + sanitize(t.Name()) + "." + hex.EncodeToString(b[:])
	exchange, stream = base+".x", base+".stream"
	t.Cleanup(func() {
		for _, url := range c.URLs {
			if answers(url) {
				Delete(t, url, exchange, stream)
				return
			}
		}
		t.Logf("amqptest: cleanup: no cluster node answers; %s and %s are left", exchange, stream)
	})
	return exchange, stream
}
