package amqptest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/amqptest"
)

// TestClusterReplicatedStream checks the private cluster end to end: a stream declared
// through node 1 with three replicas has a member online on every node, what node 1
// confirmed is read back in order through node 3, and the stream can be deleted.
func TestClusterReplicatedStream(t *testing.T) {
	c := amqptest.Cluster(t)
	_, stream := c.Names(t)

	ch1 := amqptest.Channel(t, c.URLs[0])
	if _, err := ch1.QueueDeclare(stream, true, false, false, false, amqp.Table{
		"x-queue-type":           "stream",
		"x-initial-cluster-size": 3,
		"x-queue-leader-locator": "balanced",
	}); err != nil {
		t.Fatalf("declare stream %s: %v", stream, err)
	}
	if err := c.WaitMembers(stream, []int{1, 2, 3}, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(stream)
	if err != nil || leader < 1 || leader > 3 {
		t.Fatalf("Leader: got %d, %v, want a node from 1 to 3", leader, err)
	}
	t.Logf("stream %s: leader on node %d", stream, leader)

	const n = 20
	if err := ch1.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		dc, err := ch1.PublishWithDeferredConfirmWithContext(ctx, "", stream, true, false,
			amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte(fmt.Sprint("m", i))})
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("confirm of publish %d: got ack %v, %v, want an ack", i, ok, err)
		}
	}

	ch3 := amqptest.Channel(t, c.URLs[2])
	if err := ch3.Qos(n, 0, false); err != nil {
		t.Fatalf("qos: %v", err)
	}
	deliveries, err := ch3.Consume(stream, "", false, false, false, false, amqp.Table{"x-stream-offset": "first"})
	if err != nil {
		t.Fatalf("consume %s through node 3: %v", stream, err)
	}
	for i := range n {
		select {
		case d, ok := <-deliveries:
			if !ok {
				t.Fatalf("deliveries closed after %d messages", i)
			}
			if got, want := string(d.Body), fmt.Sprint("m", i); got != want {
				t.Fatalf("message %d through node 3: got %q, want %q", i, got, want)
			}
			if err := d.Ack(false); err != nil {
				t.Fatalf("ack: %v", err)
			}
		case <-ctx.Done():
			t.Fatalf("got %d of %d messages through node 3 before the deadline", i, n)
		}
	}

	if _, err := ch1.QueueDelete(stream, false, false, false); err != nil {
		t.Fatalf("delete stream %s: %v", stream, err)
	}
	ch := amqptest.Channel(t, c.URLs[1])
	if _, err := ch.QueueDeclarePassive(stream, true, false, false, false, nil); !isNotFound(err) {
		t.Fatalf("stream after delete, seen from node 2: got %v, want 404 NOT_FOUND", err)
	}
}

func isNotFound(err error) bool {
	var aerr *amqp.Error
	return errors.As(err, &aerr) && aerr.Code == amqp.NotFound
}

// TestClusterTLS checks node 1's TLS listener: the server's certificate is verified
// against the cluster's CA and the server name (by name and by address); a client may
// come with no certificate or with one the CA signed, and the server asks for it and
// refuses one of another CA (verify_peer without fail_if_no_peer_cert).
func TestClusterTLS(t *testing.T) {
	c := amqptest.Cluster(t)
	client, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatalf("load the client certificate: %v", err)
	}
	stranger := selfSigned(t)
	byIP := strings.Replace(c.TLSURL, "localhost", "127.0.0.1", 1)
	tests := []struct {
		name       string
		url        string
		trustCA    bool             // trust the cluster's CA (else the system's roots)
		serverName string           // "": the URL's host
		cert       *tls.Certificate // the client's certificate, nil for none
		wantErr    func(error) bool // nil: the connection must open
	}{
		{"no client certificate", c.TLSURL, true, "", nil, nil},
		{"client certificate", c.TLSURL, true, "", &client, nil},
		{"by address", byIP, true, "", nil, nil},
		{"wrong server name", c.TLSURL, true, "herald-wrong.invalid", nil, isHostnameError},
		{"unknown CA", c.TLSURL, false, "", nil, isUnknownAuthority},
		// TLS 1.2: the server's refusal comes in the handshake (with 1.3 it comes after,
		// as a reset or an alert, whichever the client reads first).
		{"client certificate of another CA", c.TLSURL, true, "", &stranger, isAlert},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{MinVersion: tls.VersionTLS12}
			if tc.trustCA {
				cfg = c.TLSConfig(t, false)
			}
			cfg.ServerName = tc.serverName
			if tc.wantErr != nil && tc.cert != nil {
				cfg.MaxVersion = tls.VersionTLS12
			}
			var asked atomic.Bool
			if tc.cert != nil {
				// Sent whatever CAs the server names (Go would send none of another CA).
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					asked.Store(true)
					return tc.cert, nil
				}
			}
			conn, err := amqp.DialConfig(tc.url, amqp.Config{TLSClientConfig: cfg, Dial: amqp.DefaultDial(10 * time.Second)})
			if tc.wantErr != nil {
				if conn != nil {
					_ = conn.Close()
				}
				if !tc.wantErr(err) {
					t.Fatalf("dial %s: got %v, want the connection refused for this reason", tc.url, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial %s: %v", tc.url, err)
			}
			defer conn.Close()
			if state := conn.ConnectionState(); !state.HandshakeComplete || len(state.VerifiedChains) == 0 {
				t.Fatalf("TLS state: handshake complete %v, %d verified chains; want a verified handshake",
					state.HandshakeComplete, len(state.VerifiedChains))
			}
			if tc.cert != nil && !asked.Load() {
				t.Fatalf("the server did not ask for a client certificate")
			}
			ch, err := conn.Channel()
			if err != nil {
				t.Fatalf("channel over TLS: %v", err)
			}
			_ = ch.Close()
		})
	}
}

// isAlert tells whether err is a TLS alert from the server ("remote error: tls: ...").
func isAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}

func isHostnameError(err error) bool {
	var herr x509.HostnameError
	return errors.As(err, &herr)
}

func isUnknownAuthority(err error) bool {
	var uerr x509.UnknownAuthorityError
	return errors.As(err, &uerr)
}

// selfSigned returns a client certificate that no CA of the cluster signed.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "herald-stranger"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestClusterMetrics checks that each node serves its own rabbitmq_prometheus endpoint,
// on the port the dashboard tests scrape.
func TestClusterMetrics(t *testing.T) {
	c := amqptest.Cluster(t)
	if len(c.MetricsURLs) != len(c.URLs) {
		t.Fatalf("metrics URLs: got %d, want one per node (%d)", len(c.MetricsURLs), len(c.URLs))
	}
	client := &http.Client{Timeout: 10 * time.Second}
	for i, url := range c.MetricsURLs {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		_ = resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: got %d, %v, want 200", url, resp.StatusCode, err)
		}
		want := fmt.Sprintf(`rabbitmq_node="herald-c%d@localhost"`, i+1)
		if !strings.Contains(string(body), want) {
			t.Errorf("GET %s: no %s in the metrics", url, want)
		}
	}
}
