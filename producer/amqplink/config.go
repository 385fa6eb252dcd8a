// Package amqplink is Herald's one AMQP link, written once and used by every part that
// talks to RabbitMQ: the producer's Publisher, the gateway's stream consumer and its
// replays, the header probe and the presence link.
//
// A Link dials the first node of a list that answers, in the order given; when its
// connection is lost it moves on to the next node, so that a gateway whose broker node
// died goes on with another node of the cluster at once. Between rounds over the list it
// waits with exponential backoff and full jitter (Backoff), so that gateways do not
// reconnect in lockstep. Every failover is logged, with the URLs redacted, and reported
// to the link's hooks (metrics).
//
// Every blocking AMQP call is bounded: the handshake by DialTimeout, a session's setup
// (declares, binds, consume) by CallTimeout, and the connection's liveness by heartbeats
// (Heartbeat, 5 s by default: amqp091 gives up on a node that sends nothing for three
// half-heartbeats, 7.5 s), which also ends any call waiting on a node that hangs without
// closing its sockets (a frozen VM, a network that drops packets).
//
// Keep is the one reconnect loop; Confirmer is the one publisher with confirms.
package amqplink

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/redact"
)

// Defaults of Config's zero fields.
const (
	DefaultDialTimeout  = 5 * time.Second
	DefaultHeartbeat    = 5 * time.Second
	DefaultCallTimeout  = 15 * time.Second
	DefaultReconnectMin = 100 * time.Millisecond
	DefaultReconnectMax = 10 * time.Second
)

// closeTimeout bounds the close handshake of a connection: a node that does not answer
// it within this time gets its socket closed.
const closeTimeout = 5 * time.Second

// Config configures a Link. Only URLs is required; each zero field has the default its
// comment gives. Validate (which NewLink calls) is the one validator of these settings
// for every part of Herald.
type Config struct {
	// URLs are the AMQP URIs of the broker's nodes, in order of preference
	// (amqp://user:pass@host:5672/vhost or amqps://...). A link connects to the first one
	// that answers and, when it loses that node, moves to the next. Required. SplitURLs
	// reads the comma-separated form that flags take.
	URLs []string
	// Link names the link in logs and in the hooks' calls: "publisher", "consumer",
	// "replay", "presence-consumer", ...; "amqp" when empty.
	Link string
	// Name is the connection name the broker shows (client property connection_name);
	// Link when empty.
	Name string
	// TLS configures amqps:// connections: the CAs trusted and the client certificate
	// (see LoadTLS). The server name checked is each URL's host, unless TLS.ServerName
	// names one. nil: amqp091's defaults (the system's CAs, or the cacertfile, certfile
	// and keyfile parameters of the URL).
	TLS *tls.Config
	// DialTimeout bounds one node's TCP connect, TLS and AMQP handshakes together, and
	// the close handshake; 5s when zero.
	DialTimeout time.Duration
	// Heartbeat is the AMQP heartbeat the link asks for; 5s when zero. A node that sends
	// nothing for 1.5 times it is taken for lost. A URL's heartbeat parameter wins.
	Heartbeat time.Duration
	// CallTimeout bounds a session's setup (Open's setup function: declares, binds,
	// consume) and every call guarded with Conn.Guard; 15s when zero.
	CallTimeout time.Duration
	// ReconnectMin is the first ceiling of the wait between two rounds of attempts over
	// the node list; 100ms when zero. Each failed round doubles it, up to ReconnectMax,
	// and each wait is drawn uniformly between zero and the ceiling (full jitter).
	ReconnectMin time.Duration
	// ReconnectMax is the largest ceiling; 10s when zero. It must not be below
	// ReconnectMin.
	ReconnectMax time.Duration
	// Logger receives the link's logs; they are discarded when nil.
	Logger *slog.Logger
	// OnNode, when set, is called each time the link connects, with the index in URLs of
	// the node it is on, and each time that connection ends, with -1. Calls for one link
	// come one at a time, in order; they must return quickly.
	OnNode func(link string, node int)
	// OnFailover, when set, is called when the link connects to another node than the
	// one it was last connected to (from and to are indexes in URLs), after OnNode.
	OnFailover func(link string, from, to int)
}

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.Link == "" {
		c.Link = "amqp"
	}
	if c.Name == "" {
		c.Name = c.Link
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = DefaultReconnectMin
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = DefaultReconnectMax
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports what makes c unusable, every problem at once: no URL, a URL the AMQP
// client cannot read (shown redacted), a negative duration, or ReconnectMin above
// ReconnectMax. Zero fields are fine (they take their defaults).
func (c Config) Validate() error {
	var errs []error
	if len(c.URLs) == 0 {
		errs = append(errs, errors.New("URL is required"))
	}
	for i, u := range c.URLs {
		if err := CheckURL(u); err != nil {
			if len(c.URLs) > 1 {
				err = fmt.Errorf("URL %d of %d: %w", i+1, len(c.URLs), err)
			}
			errs = append(errs, err)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"DialTimeout", c.DialTimeout}, {"Heartbeat", c.Heartbeat}, {"CallTimeout", c.CallTimeout},
		{"ReconnectMin", c.ReconnectMin}, {"ReconnectMax", c.ReconnectMax}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative", d.name, d.v))
		}
	}
	if d := c.withDefaults(); c.ReconnectMin >= 0 && c.ReconnectMax >= 0 && d.ReconnectMin > d.ReconnectMax {
		errs = append(errs, fmt.Errorf("ReconnectMin %v is above ReconnectMax %v", d.ReconnectMin, d.ReconnectMax))
	}
	return errors.Join(errs...)
}

// CheckURL reports whether the AMQP client can read raw: amqp:// or amqps://, a host, a
// port in range, a well-escaped password. The error shows the URL redacted.
func CheckURL(raw string) error {
	if raw == "" {
		return errors.New("empty URL")
	}
	if _, err := amqp.ParseURI(raw); err != nil {
		return fmt.Errorf("URL %s: %w", redact.URL(raw), redact.Error(err, raw))
	}
	return nil
}

// listSplit finds the commas that start another URL of a list: a comma inside one URL
// (a password may hold one) is not followed by a scheme.
var listSplit = regexp.MustCompile(`,\s*[A-Za-z][A-Za-z0-9+.-]*://`)

// SplitURLs splits a comma-separated list of URLs ("amqp://a:5672/,amqp://b:5672/"), as
// --amqp-url takes it, trimming spaces. A comma inside a URL (in a password) does not
// split it: only one followed by a scheme does. An empty list gives nil.
func SplitURLs(list string) []string {
	if strings.TrimSpace(list) == "" {
		return nil
	}
	var out []string
	start := 0
	for _, loc := range listSplit.FindAllStringIndex(list, -1) {
		out = append(out, strings.TrimSpace(list[start:loc[0]]))
		start = loc[0] + 1
	}
	return append(out, strings.TrimSpace(list[start:]))
}

// LoadTLS returns the TLS configuration of amqps:// links: the CAs of caFile trusted
// (the system's when caFile is empty) and, when certFile and keyFile are given, that
// client certificate presented. The server name is left to each URL's host. It returns
// nil, nil when all three are empty; certFile and keyFile go together.
func LoadTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", caFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case certFile != "" && keyFile != "":
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	case certFile != "" || keyFile != "":
		return nil, errors.New("a client certificate needs both its certificate file and its key file")
	}
	return cfg, nil
}
