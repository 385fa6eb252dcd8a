package producer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/redact"
)

// Errors a publish can end with besides validation errors (message.ErrBadChannel and
// the others) and the context's error. Callers match them with errors.Is.
var (
	// ErrUnavailable means the Publisher is not connected to the broker, or lost its
	// connection or channel before the broker confirmed the message. The broker may or
	// may not have the message; retrying with the same id is safe (gateways deduplicate).
	ErrUnavailable = errors.New("not connected to the broker")
	// ErrNacked means the broker refused the message (basic.nack), for example because a
	// bound queue is full and rejects publishes.
	ErrNacked = errors.New("the broker nacked the message")
	// ErrReturned means the broker returned the message as unroutable: no queue (and
	// so no gateway's stream) is bound to the exchange.
	ErrReturned = errors.New("the broker returned the message as unroutable")
	// ErrClosed means Close was called. Errors that wrap it wrap ErrUnavailable too.
	ErrClosed = errors.New("publisher closed")
)

// Config configures a Publisher. Only URL is required; each zero field has the default
// its comment gives.
type Config struct {
	// URL is the broker's AMQP URI, e.g. amqp://guest:guest@127.0.0.1:5672/. Required.
	URL string
	// Exchange is the durable fanout exchange to publish to; default "herald".
	Exchange string
	// Name is the connection name the broker shows (client property connection_name);
	// default "herald-producer".
	Name string
	// DialTimeout bounds each TCP connect and AMQP handshake, and closing the connection;
	// default 5s. How long a publish may take is the business of the context passed to
	// Publish.
	DialTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the exponential backoff, with jitter, between
	// reconnect attempts; defaults 100ms and 10s. ReconnectMin must not exceed
	// ReconnectMax.
	ReconnectMin time.Duration
	ReconnectMax time.Duration
	// Logger receives warnings on connection loss and info on reconnect; default: logs
	// are discarded.
	Logger *slog.Logger
	// OnStateChange, when not nil, is called with true once New has connected and after
	// each reconnect, and with false when the connection is lost and on Close. It is
	// called from the Publisher's lifecycle goroutine (and from New), one call at a
	// time; it must return quickly and must not call Close.
	OnStateChange func(connected bool)
	// OnReconnect, when not nil, is called after each successful reconnect (not after
	// the first connect in New), from the lifecycle goroutine like OnStateChange.
	OnReconnect func()
}

// Defaults of Config's zero fields.
const (
	DefaultExchange     = "herald"
	DefaultName         = "herald-producer"
	DefaultDialTimeout  = 5 * time.Second
	DefaultReconnectMin = 100 * time.Millisecond
	DefaultReconnectMax = 10 * time.Second
)

// withDefaults returns cfg with every zero field set to its default, or an error when
// cfg cannot work.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.URL == "" {
		return cfg, errors.New("config: URL is required")
	}
	if _, err := amqp.ParseURI(cfg.URL); err != nil {
		return cfg, fmt.Errorf("config: URL: %w", redact.Error(err, cfg.URL))
	}
	if cfg.Exchange == "" {
		cfg.Exchange = DefaultExchange
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.ReconnectMin == 0 {
		cfg.ReconnectMin = DefaultReconnectMin
	}
	if cfg.ReconnectMax == 0 {
		cfg.ReconnectMax = DefaultReconnectMax
	}
	if cfg.DialTimeout < 0 || cfg.ReconnectMin < 0 || cfg.ReconnectMin > cfg.ReconnectMax {
		return cfg, fmt.Errorf("config: got DialTimeout %v, ReconnectMin %v, ReconnectMax %v; want positive durations and ReconnectMin <= ReconnectMax",
			cfg.DialTimeout, cfg.ReconnectMin, cfg.ReconnectMax)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// Publisher publishes messages to the Herald exchange with publisher confirms, and
// keeps its connection up: when the connection or channel fails it reconnects in the
// background, and publishes in the meantime fail at once with ErrUnavailable.
//
// A Publisher is safe for concurrent use by many goroutines. It uses one AMQP
// connection with one channel in confirm mode (a session); its lifecycle goroutine
// owns the session: it is the only one that opens, replaces and closes it after New.
type Publisher struct {
	cfg  Config
	addr string // host:port of the broker, for logs (the URL may hold a password)

	// cur is the live session, nil while disconnected and after Close. Publish reads
	// it; only New and the lifecycle goroutine write it.
	cur atomic.Pointer[session]

	// ctx is cancelled by Close: it stops the lifecycle goroutine and any dial in
	// progress.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts the lifecycle goroutine and every session's event goroutine.
	wg sync.WaitGroup
	// closeErr is written by the lifecycle goroutine before it ends and read by Close
	// after wg.Wait.
	closeErr error
}

// New connects to the broker, opens a channel in confirm mode and declares the durable
// fanout exchange, then returns a Publisher that keeps that connection up until Close.
// It fails at once, with a wrapped error, when the first connection attempt fails;
// ctx bounds that attempt only.
func New(ctx context.Context, cfg Config) (*Publisher, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("producer: new: %w", err)
	}
	uri, _ := amqp.ParseURI(cfg.URL) // checked by withDefaults
	p := &Publisher{cfg: cfg, addr: net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	s, err := p.open(ctx)
	if err != nil {
		p.cancel()
		return nil, fmt.Errorf("producer: new: %w", err)
	}
	p.cur.Store(s)
	p.cfg.Logger.Info("producer: connected", "addr", p.addr, "exchange", cfg.Exchange)
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
	if p.ctx.Err() != nil {
		return m.ID, fmt.Errorf("producer: publish %s: %w: %w", m.ID, ErrClosed, ErrUnavailable)
	}
	s := p.cur.Load()
	if s == nil {
		return m.ID, fmt.Errorf("producer: publish %s: %w", m.ID, ErrUnavailable)
	}
	if err := s.publish(ctx, p.cfg.Exchange, Encode(m)); err != nil {
		return m.ID, fmt.Errorf("producer: publish %s: %w", m.ID, err)
	}
	return m.ID, nil
}

// Connected reports whether the Publisher has a live connection to the broker now.
func (p *Publisher) Connected() bool {
	return p.cur.Load() != nil
}

// Close stops reconnecting and closes the connection. Publishes waiting for a confirm
// fail with ErrUnavailable; later ones fail with ErrClosed. Close returns once every
// goroutine the Publisher started has ended. It is safe to call more than once.
func (p *Publisher) Close() error {
	p.cancel()
	p.wg.Wait()
	if p.closeErr != nil {
		return fmt.Errorf("producer: close: %w", p.closeErr)
	}
	return nil
}

// run is the lifecycle goroutine: it owns the session s, replaces it when it fails,
// and closes it when the Publisher is closed.
func (p *Publisher) run(s *session) {
	defer p.wg.Done()
	for {
		select {
		case <-p.ctx.Done():
			p.cur.Store(nil)
			p.closeErr = s.close(p.cfg.DialTimeout)
			p.stateChanged(false)
			return
		case <-s.done:
		}
		p.cur.Store(nil)
		lost := time.Now()
		p.cfg.Logger.Warn("producer: lost the broker connection; reconnecting", "addr", p.addr, "err", s.err)
		_ = s.close(p.cfg.DialTimeout) // the connection may outlive a failed channel
		p.stateChanged(false)

		s = p.reconnect()
		if s == nil {
			return // closed while reconnecting
		}
		p.cur.Store(s)
		p.cfg.Logger.Info("producer: reconnected", "addr", p.addr, "down", time.Since(lost).Round(time.Millisecond))
		p.stateChanged(true)
		if p.cfg.OnReconnect != nil {
			p.cfg.OnReconnect()
		}
	}
}

// reconnect opens a new session, retrying with backoff until it succeeds (it returns
// the session) or the Publisher is closed (it returns nil). Lifecycle goroutine only.
func (p *Publisher) reconnect() *session {
	for attempt := 0; ; attempt++ {
		t := time.NewTimer(backoff(attempt, p.cfg.ReconnectMin, p.cfg.ReconnectMax))
		select {
		case <-p.ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		s, err := p.open(p.ctx)
		if err != nil {
			p.cfg.Logger.Warn("producer: reconnect failed", "addr", p.addr, "attempt", attempt+1, "err", err)
			continue
		}
		if p.ctx.Err() != nil { // Close raced with a successful dial
			_ = s.close(p.cfg.DialTimeout)
			return nil
		}
		return s
	}
}

// open dials the broker and sets up a session: a channel in confirm mode, the exchange
// declared, and the session's event goroutine started (counted in p.wg).
func (p *Publisher) open(ctx context.Context) (*session, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(p.cfg.Name)
	timeout := p.cfg.DialTimeout
	conn, err := amqp.DialConfig(p.cfg.URL, amqp.Config{
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: timeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Bound the AMQP handshake too; amqp091 clears the deadline once it is done.
			if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
				_ = c.Close()
				return nil, err
			}
			return c, nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", p.addr, redact.Error(err, p.cfg.URL))
	}
	s, err := newSession(conn, p.cfg.Logger)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		s.run()
	}()
	err = s.ch.Confirm(false)
	if err != nil {
		err = fmt.Errorf("enable confirms: %w", err)
	} else if err = s.ch.ExchangeDeclare(p.cfg.Exchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		err = fmt.Errorf("declare exchange %q: %w", p.cfg.Exchange, err)
	}
	if err != nil {
		_ = s.close(timeout)
		return nil, err
	}
	return s, nil
}

// stateChanged calls the OnStateChange hook, if any.
func (p *Publisher) stateChanged(connected bool) {
	if p.cfg.OnStateChange != nil {
		p.cfg.OnStateChange(connected)
	}
}

// backoff returns how long to wait before reconnect attempt n (counting from 0): a
// uniformly random duration between lo and min(hi, lo·2ⁿ), so the first retry comes
// after lo and the waits spread out as they grow, up to hi.
func backoff(n int, lo, hi time.Duration) time.Duration {
	ceil := lo
	for i := 0; i < n && ceil < hi; i++ {
		ceil *= 2
	}
	ceil = min(ceil, hi)
	if ceil <= lo {
		return lo
	}
	return lo + rand.N(ceil-lo+1)
}
