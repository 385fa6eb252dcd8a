package producer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/amqplink"
)

// Errors a publish can end with besides validation errors (message.ErrBadChannel and
// the others) and the context's error. Callers match them with errors.Is.
var (
	// ErrUnavailable means the Publisher is not connected to the broker, or lost its
	// connection or channel before the broker confirmed the message, or the broker is
	// blocking publishes. The broker may or may not have the message; retrying with the
	// same id is safe (gateways deduplicate).
	ErrUnavailable = amqplink.ErrUnavailable
	// ErrNacked means the broker refused the message (basic.nack): a bound queue that
	// rejects publishes, or a stream that cannot take writes now (no majority of its
	// replicas online). Retrying with the same id is safe.
	ErrNacked = amqplink.ErrNacked
	// ErrReturned means the broker returned the message as unroutable: no queue (and
	// so no gateway's stream) is bound to the exchange.
	ErrReturned = amqplink.ErrReturned
	// ErrClosed means Close was called. Errors that wrap it wrap ErrUnavailable too.
	ErrClosed = errors.New("publisher closed")
)

// Config configures a Publisher. Only URL is required; each zero field has the default
// its comment gives.
type Config struct {
	// URL is the broker's AMQP URI, e.g. amqp://guest:guest@127.0.0.1:5672/, or the
	// comma-separated URIs of a cluster's nodes: the Publisher connects to the first that
	// answers and, when it loses that node, moves on to the next (amqplink.SplitURLs).
	// amqps:// URIs connect with TLS (see TLS). Required.
	URL string
	// Exchange is the durable fanout exchange to publish to; default "herald".
	Exchange string
	// Name is the connection name the broker shows (client property connection_name);
	// default "herald-producer".
	Name string
	// TLS configures amqps:// connections: the CAs trusted and a client certificate
	// (amqplink.LoadTLS reads them from files); the server name checked is each URL's
	// host. nil: the system's CAs, or the URL's cacertfile, certfile and keyfile
	// parameters.
	TLS *tls.Config
	// DialTimeout bounds each connection attempt to one node (TCP, TLS and AMQP
	// handshakes), and closing the connection; default 5s. How long a publish may take is
	// the business of the context passed to Publish.
	DialTimeout time.Duration
	// Heartbeat is the AMQP heartbeat; default 5s: a node that hangs without closing the
	// connection is given up after 7.5s, and the Publisher moves to another.
	Heartbeat time.Duration
	// ReconnectMin and ReconnectMax bound the exponential backoff, with full jitter,
	// between rounds of reconnect attempts over the node list; defaults 100ms and 10s.
	// ReconnectMin must not exceed ReconnectMax.
	ReconnectMin time.Duration
	ReconnectMax time.Duration
	// Logger receives warnings on connection loss and failover and info on reconnect;
	// default: logs are discarded.
	Logger *slog.Logger
	// OnStateChange, when not nil, is called with true once New has connected and after
	// each reconnect, and with false when the connection is lost and on Close. It is
	// called from the Publisher's lifecycle goroutine (and from New), one call at a
	// time; it must return quickly and must not call Close.
	OnStateChange func(connected bool)
	// OnReconnect, when not nil, is called after each successful reconnect (not after
	// the first connect in New), from the lifecycle goroutine like OnStateChange.
	OnReconnect func()
	// OnNode and OnFailover, when not nil, hear which node of URL the Publisher is on
	// (link "publisher"): see amqplink.Config.
	OnNode     func(link string, node int)
	OnFailover func(link string, from, to int)
}

// Defaults of Config's zero fields.
const (
	DefaultExchange     = "herald"
	DefaultName         = "herald-producer"
	DefaultDialTimeout  = amqplink.DefaultDialTimeout
	DefaultReconnectMin = amqplink.DefaultReconnectMin
	DefaultReconnectMax = amqplink.DefaultReconnectMax
)

// link returns the Publisher's link for cfg, or the problems of cfg.
func (cfg *Config) link() (*amqplink.Link, error) {
	if cfg.Exchange == "" {
		cfg.Exchange = DefaultExchange
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	l, err := amqplink.NewLink(amqplink.Config{
		URLs:         amqplink.SplitURLs(cfg.URL),
		Link:         "publisher",
		Name:         cfg.Name,
		TLS:          cfg.TLS,
		DialTimeout:  cfg.DialTimeout,
		Heartbeat:    cfg.Heartbeat,
		ReconnectMin: cfg.ReconnectMin,
		ReconnectMax: cfg.ReconnectMax,
		Logger:       cfg.Logger.With("component", "producer"),
		OnNode:       cfg.OnNode,
		OnFailover:   cfg.OnFailover,
	})
	if err != nil {
		return nil, fmt.Errorf("config: %w", errors.Unwrap(err))
	}
	return l, nil
}

// Publisher publishes messages to the Herald exchange with publisher confirms, and
// keeps its connection up: when the connection or channel fails it reconnects in the
// background, to the next node of its list first, and publishes in the meantime fail at
// once with ErrUnavailable.
//
// A Publisher is safe for concurrent use by many goroutines. It uses one AMQP
// connection with one channel in confirm mode (a session); its lifecycle goroutine
// owns the session: it is the only one that opens, replaces and closes it after New.
type Publisher struct {
	cfg  Config
	link *amqplink.Link

	// cur is the live session's publisher, nil while disconnected and after Close.
	// Publish reads it; only New and the lifecycle goroutine write it.
	cur atomic.Pointer[amqplink.Confirmer]

	// ctx is cancelled by Close: it stops the lifecycle goroutine and any dial in
	// progress.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts the lifecycle goroutine.
	wg sync.WaitGroup
	// closeErr is written by the lifecycle goroutine before it ends and read by Close
	// after wg.Wait.
	closeErr error
	// next is the Confirmer of the session setup made last, for serve (or New) to take;
	// written by setup, on the goroutine that opens sessions (New's, then the lifecycle
	// goroutine).
	next *amqplink.Confirmer
}

// New connects to the first node of cfg.URL that answers, opens a channel in confirm
// mode and declares the durable fanout exchange, then returns a Publisher that keeps a
// connection up until Close. It fails at once, with a wrapped error, when no node
// answers the first time; ctx bounds that attempt only.
func New(ctx context.Context, cfg Config) (*Publisher, error) {
	link, err := cfg.link()
	if err != nil {
		return nil, fmt.Errorf("producer: new: %w", err)
	}
	p := &Publisher{cfg: cfg, link: link}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	s, err := link.Open(ctx, p.setup)
	if err != nil {
		p.cancel()
		link.Wait()
		return nil, fmt.Errorf("producer: new: %w", err)
	}
	p.cur.Store(p.next)
	p.cfg.Logger.Info("producer: connected", "addr", s.Addr(), "exchange", cfg.Exchange)
	p.stateChanged(true)
	p.wg.Add(1)
	go p.run(s)
	return p, nil
}

// Publish validates m, fills its ID (when empty) and Time (when zero), publishes it to
// the exchange as mandatory, and waits for the broker's confirm. It returns the id the
// message was published with, also alongside an error, so that a caller can retry
// with the same id (gateways deliver a repeated id once).
//
// It returns nil only once the broker has acked the message. Otherwise the error wraps
// one of: a validation error from package message (ErrBadChannel, ErrNoData, ...);
// ErrUnavailable, at once, while there is no connection (and ErrClosed too after
// Close), or when the connection is lost before the confirm; ErrNacked; ErrReturned
// when no queue is bound to the exchange; or ctx's error when ctx ends first, in which
// case the broker may still take the message. ctx bounds the whole call: give it a
// deadline.
func (p *Publisher) Publish(ctx context.Context, m Message) (string, error) {
	m.Prepare(time.Now())
	if err := m.Validate(); err != nil {
		return m.ID, fmt.Errorf("producer: publish %s: %w", m.ID, err)
	}
	if err := p.PublishRaw(ctx, Encode(m)); err != nil {
		return m.ID, fmt.Errorf("producer: publish %s: %w", m.ID, err)
	}
	return m.ID, nil
}

// PublishRaw publishes msg to the exchange as mandatory, as it is, and waits for the
// broker's confirm, with the errors of Publish. It is for messages that are not Herald
// messages: the control messages of gateways (see HeaderControl).
func (p *Publisher) PublishRaw(ctx context.Context, msg amqp.Publishing) error {
	if p.ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrClosed, ErrUnavailable)
	}
	c := p.cur.Load()
	if c == nil {
		return ErrUnavailable
	}
	return c.Publish(ctx, p.cfg.Exchange, "", true, msg)
}

// Connected reports whether the Publisher has a live connection to the broker now.
func (p *Publisher) Connected() bool {
	return p.cur.Load() != nil
}

// Node returns the index, in the list of Config.URL, of the node the Publisher is
// connected to, and false while it is not connected.
func (p *Publisher) Node() (int, bool) { return p.link.Current() }

// Close stops reconnecting and closes the connection. Publishes waiting for a confirm
// fail with ErrUnavailable; later ones fail with ErrClosed. Close returns once every
// goroutine the Publisher started has ended. It is safe to call more than once.
func (p *Publisher) Close() error {
	p.cancel()
	p.wg.Wait()
	p.link.Wait()
	if p.closeErr != nil {
		return fmt.Errorf("producer: close: %w", p.closeErr)
	}
	return nil
}

// run is the lifecycle goroutine: it keeps a session (the first one is s), replaces
// it when it fails, and closes it when the Publisher is closed.
func (p *Publisher) run(s *amqplink.Session) {
	defer p.wg.Done()
	_ = p.link.Keep(p.ctx, s, func(ctx context.Context) (*amqplink.Session, error) {
		return p.link.Open(ctx, p.setup)
	}, p.serve)
}

// setup declares the exchange and makes the session's Confirmer, which it keeps in the
// session for serve.
func (p *Publisher) setup(s *amqplink.Session) error {
	c, err := amqplink.NewConfirmer(s, p.cfg.Logger)
	if err != nil {
		return err
	}
	if err := s.Ch.ExchangeDeclare(p.cfg.Exchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %q: %w", p.cfg.Exchange, err)
	}
	p.next = c
	return nil
}

// serve publishes through s until its channel closes (it returns why) or the Publisher
// is closed (it closes s and returns nil). The lifecycle goroutine.
func (p *Publisher) serve(s *amqplink.Session) error {
	c := p.next
	if p.cur.Load() != c { // a reconnect: New made the first session current
		p.cur.Store(c)
		p.cfg.Logger.Info("producer: reconnected", "addr", s.Addr())
		p.stateChanged(true)
		if p.cfg.OnReconnect != nil {
			p.cfg.OnReconnect()
		}
	}
	var err error
	select {
	case <-p.ctx.Done():
		p.cur.Store(nil)
		p.closeErr = s.Conn.Close()
		<-c.Done()
		p.stateChanged(false)
		return nil
	case <-c.Done():
		err = c.Err()
	}
	p.cur.Store(nil)
	p.cfg.Logger.Warn("producer: lost the broker connection; reconnecting", "addr", s.Addr(), "err", err)
	p.stateChanged(false)
	s.Close() // the connection may outlive a failed channel
	return err
}

// stateChanged calls the OnStateChange hook, if any.
func (p *Publisher) stateChanged(connected bool) {
	if p.cfg.OnStateChange != nil {
		p.cfg.OnStateChange(connected)
	}
}
