package consumer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/amqplink"
)

// Defaults of PresenceConfig's zero fields, and limits of the presence link.
const (
	presenceDefaultExchange    = "herald.presence"
	presenceDefaultName        = "herald-presence"
	presenceDefaultTTL         = 15 * time.Second
	presenceDefaultMaxQueued   = 10000
	presenceDefaultSendTimeout = 5 * time.Second
	// presencePrefetch bounds the updates the broker sends ahead of acks: with MaxQueued
	// it bounds what a gateway whose handler is slow holds, and beyond it the queue
	// drops its oldest updates.
	presencePrefetch = 100
	// presenceMaxTTL is the largest x-message-ttl RabbitMQ takes (2^32-1 ms, about 49 days).
	presenceMaxTTL = (1<<32 - 1) * time.Millisecond

	presenceContentType = "application/json"
	presenceType        = "herald.presence"
)

// ErrPresenceUnavailable means a presence update was not sent, or not known to be: the
// link was not connected, lost its publisher connection before the broker confirmed the
// update, the broker nacked it, or the context or SendTimeout ended first. Errors that
// wrap it also wrap the cause: producer.ErrUnavailable, producer.ErrNacked or the
// context's error. Presence is soft state: the update may be lost, and the gateways
// exchange snapshots when the link is back (PresenceHandler.PresenceConnected).
var ErrPresenceUnavailable = errors.New("presence update not sent")

// PresenceHandler receives the presence updates of every gateway of the cluster (this
// one's included).
type PresenceHandler interface {
	// HandlePresence is called with each update's body, in the order the broker delivers
	// them, from one goroutine (Run's). body is not reused: the handler may keep it.
	// An update sent after another one's Send returned arrives after it.
	HandlePresence(body []byte)
	// PresenceConnected is called from Run's goroutine each time the link is (re)connected
	// and consuming: updates sent while it was away are lost, so the handler asks the
	// other gateways for snapshots. It is called each time Connected becomes true, so a
	// Send from it (or from HandlePresence) finds the link up.
	PresenceConnected()
}

// PresenceConfig configures a PresenceLink. Every gateway of a cluster must use the same
// broker (or broker cluster) and Exchange; only URL is required.
type PresenceConfig struct {
	// URL is the broker's AMQP URI, e.g. amqp://user:pass@host:5672/vhost, or the
	// comma-separated URIs of a cluster's nodes: each of the link's two connections goes
	// to the first node that answers and, when it loses that node, to the next. Required.
	URL string
	// TLS configures amqps:// connections (amqplink.Config.TLS); nil: the system's CAs.
	TLS *tls.Config
	// Heartbeat is the AMQP heartbeat of both connections; 5s when zero.
	Heartbeat time.Duration
	// OnNode and OnFailover, when set, hear which node each connection is on (links
	// "presence-consumer" and "presence-publisher"): see amqplink.Config.
	OnNode     func(link string, node int)
	OnFailover func(link string, from, to int)
	// Exchange is the fanout exchange that carries presence updates; "herald.presence"
	// when empty. It is declared durable, like the message exchange.
	Exchange string
	// Name is the prefix of the connection names shown in the broker's management tools:
	// "<Name>-consumer" and "<Name>-publisher"; "herald-presence" when empty.
	Name string
	// TTL is how long an update is worth delivering: the queue's x-message-ttl, sent in
	// whole milliseconds rounded up; 15s when zero. At most about 49 days.
	TTL time.Duration
	// MaxQueued caps the updates waiting in this gateway's queue (x-max-length); over it
	// the oldest are dropped (x-overflow drop-head); 10000 when zero.
	MaxQueued int
	// Logger receives the link's logs; they are discarded when nil.
	Logger *slog.Logger
	// ReconnectMin is the first delay ceiling before reconnecting; 100ms when zero.
	// Each failed round of attempts over the node list doubles the ceiling up to
	// ReconnectMax, and each delay is drawn uniformly between zero and the ceiling
	// (amqplink.Backoff).
	ReconnectMin time.Duration
	// ReconnectMax is the largest delay ceiling between reconnect attempts; 10s when
	// zero. It must not be below ReconnectMin.
	ReconnectMax time.Duration
	// OnStateChange, when set, is called from Run's goroutine each time the link becomes
	// connected (Connected is true), and each time it is lost (either connection) or Run
	// ends (false). A loss of the publisher is seen by Run's goroutine between two
	// deliveries, so it is reported after the handler returns.
	OnStateChange func(connected bool)
	// SendTimeout bounds one Send's wait for the broker's confirm when the ctx passed to
	// Send has no earlier deadline; 5s when zero.
	SendTimeout time.Duration
}

// withDefaults returns c with its zero fields set to their defaults.
func (c PresenceConfig) withDefaults() PresenceConfig {
	if c.Exchange == "" {
		c.Exchange = presenceDefaultExchange
	}
	if c.Name == "" {
		c.Name = presenceDefaultName
	}
	if c.TTL == 0 {
		c.TTL = presenceDefaultTTL
	}
	if c.MaxQueued == 0 {
		c.MaxQueued = presenceDefaultMaxQueued
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = presenceDefaultSendTimeout
	}
	return c
}

// validate reports the first field of a defaulted config that Run cannot work with.
func (c PresenceConfig) validate() error {
	if err := c.link("presence-consumer", "").Validate(); err != nil {
		return fmt.Errorf("consumer: presence config: %w", err)
	}
	switch {
	case c.TTL < 0 || c.TTL > presenceMaxTTL:
		return fmt.Errorf("consumer: presence config: TTL %v is negative or over %v", c.TTL, presenceMaxTTL)
	case c.MaxQueued < 0:
		return fmt.Errorf("consumer: presence config: MaxQueued %d is negative", c.MaxQueued)
	case c.SendTimeout < 0:
		return fmt.Errorf("consumer: presence config: SendTimeout %v is negative", c.SendTimeout)
	}
	return nil
}

// link returns the amqplink configuration of one of the link's two connections.
func (c PresenceConfig) link(link, name string) amqplink.Config {
	return amqplink.Config{
		URLs:         amqplink.SplitURLs(c.URL),
		Link:         link,
		Name:         name,
		TLS:          c.TLS,
		Heartbeat:    c.Heartbeat,
		ReconnectMin: c.ReconnectMin,
		ReconnectMax: c.ReconnectMax,
		Logger:       c.Logger.With("component", "presence", "exchange", c.Exchange),
		OnNode:       c.OnNode,
		OnFailover:   c.OnFailover,
	}
}

// queueArgs are the arguments of each gateway's presence queue.
func (c PresenceConfig) queueArgs() amqp.Table {
	return amqp.Table{
		"x-queue-type":  "classic",
		"x-message-ttl": max(int64((c.TTL+time.Millisecond-1)/time.Millisecond), 1),
		"x-max-length":  int64(c.MaxQueued),
		"x-overflow":    "drop-head",
	}
}

// PresenceLink carries presence updates between the gateways of one cluster over
// RabbitMQ: Send publishes an opaque body to a fanout exchange, and every gateway's link
// (the sender's included) hands it to its PresenceHandler. Each link consumes a queue of
// its own, exclusive to its connection and deleted with it, so an update reaches only
// the gateways connected when it was sent, and within TTL.
//
// It consumes and publishes on separate connections. Run owns both: its goroutine owns
// the consumer session and is the only one that calls the handler and OnStateChange; a
// publisher goroutine that Run starts, and waits for, owns the publisher session. Send
// and Connected are safe to call from any goroutine.
type PresenceLink struct {
	cfg PresenceConfig // defaults applied; read-only after NewPresenceLink
	h   PresenceHandler
	log *slog.Logger
	// prefetch is the consumer's basic.qos; presencePrefetch, set lower by tests.
	// Read-only once Run is called.
	prefetch int

	started   atomic.Bool // set by the first call of Run
	consuming atomic.Bool // whether the consumer is consuming now; written by Run's goroutine
	// pub is the live publisher session, nil while there is none; written by the
	// publisher goroutine, read by Send.
	pub atomic.Pointer[presenceSession]
	// active is the live consumer session, nil while there is none; written by Run's
	// goroutine, read by tests (to drop its connection, or find its queue).
	active atomic.Pointer[presenceSession]
	// pubChanged gets a signal (without blocking) from the publisher goroutine each
	// time pub changes, so that Run's goroutine reports the change.
	pubChanged chan struct{}

	// Owned by Run's goroutine: the publisher session that the link was last reported
	// connected with, nil when it was last reported disconnected (or never connected).
	reported *presenceSession

	// The links of the two connections, made by Run.
	consumerLink, publisherLink *amqplink.Link
}

// NewPresenceLink returns a link that delivers the cluster's presence updates to h once
// Run is called. It does not connect; zero fields of cfg take the defaults documented on
// PresenceConfig.
func NewPresenceLink(cfg PresenceConfig, h PresenceHandler) *PresenceLink {
	cfg = cfg.withDefaults()
	return &PresenceLink{
		cfg:        cfg,
		h:          h,
		log:        cfg.Logger.With("component", "presence", "exchange", cfg.Exchange),
		prefetch:   presencePrefetch,
		pubChanged: make(chan struct{}, 1),
	}
}

// Connected reports whether both the consumer and the publisher are connected now.
func (l *PresenceLink) Connected() bool {
	return l.consuming.Load() && l.pub.Load() != nil
}

// Run connects, declares the exchange, declares a server-named exclusive auto-delete
// classic queue (durable false) with the x-message-ttl, x-max-length and
// x-overflow=drop-head arguments, binds it, consumes it, calls h.PresenceConnected once
// the publisher is connected too, then hands every delivery's body to h.HandlePresence
// until the connection or channel is lost; then it reconnects with backoff (a new queue
// each time). The publisher connection is opened, and reopened with the same backoff, by
// a goroutine that Run starts and waits for.
//
// Deliveries are acked after the handler returns, with a prefetch of presencePrefetch,
// so that a handler that falls behind leaves updates in the broker's queue, where
// MaxQueued and TTL bound them; the queue being exclusive, nothing is redelivered.
//
// Run returns nil when ctx ends, once every goroutine it started has ended and both
// connections are closed. It returns an error only for a configuration the broker
// refuses for good (ACCESS_REFUSED or PRECONDITION_FAILED on a declare, e.g. an exchange
// of that name that is not a durable fanout), or one that is invalid (an empty URL). A
// broker that cannot be reached is retried for as long as ctx lives. Run may be called
// once.
func (l *PresenceLink) Run(ctx context.Context) error {
	if !l.started.CompareAndSwap(false, true) {
		return errors.New("consumer: presence: Run called twice")
	}
	if l.h == nil {
		return errors.New("consumer: presence: the handler is nil")
	}
	if err := l.cfg.validate(); err != nil {
		return err
	}
	// Validated above: NewLink cannot fail.
	l.consumerLink, _ = amqplink.NewLink(l.cfg.link("presence-consumer", l.cfg.Name+"-consumer"))
	l.publisherLink, _ = amqplink.NewLink(l.cfg.link("presence-publisher", l.cfg.Name+"-publisher"))
	defer l.consumerLink.Wait()
	defer l.publisherLink.Wait()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	pubDone := make(chan error, 1)
	go func() { pubDone <- l.runPublisher(runCtx, cancel) }()

	err := l.runConsumer(runCtx)
	cancel()
	if perr := <-pubDone; err == nil {
		err = perr
	}
	if err != nil {
		l.log.Error("presence link stopped: the broker refuses its configuration", "err", err)
		return err
	}
	l.log.Info("presence link stopped")
	return nil
}

// runConsumer keeps a consumer session up until ctx ends (it returns nil) or the broker
// refuses the configuration (it returns why). Run's goroutine.
func (l *PresenceLink) runConsumer(ctx context.Context) error {
	var next *presenceSession
	return l.consumerLink.Keep(ctx, nil, func(ctx context.Context) (*amqplink.Session, error) {
		s, err := l.openConsumer(ctx)
		if err != nil {
			return nil, err
		}
		next = s
		return s.Session, nil
	}, func(*amqplink.Session) error {
		s := next
		l.active.Store(s)
		l.consuming.Store(true)
		l.log.Info("presence consumer connected", "queue", s.queue, "node", s.Node()+1, "addr", s.Addr())
		l.syncState()
		err := l.consume(ctx, s)
		l.active.Store(nil)
		l.consuming.Store(false)
		l.syncState()
		if err != nil {
			err = fmt.Errorf("%w (queue %s)", err, s.queue)
		}
		return err
	})
}

// runPublisher keeps a publisher session in l.pub until ctx ends (it returns nil) or the
// broker refuses the configuration (it calls fail, to stop Run, and returns why). The
// publisher goroutine.
func (l *PresenceLink) runPublisher(ctx context.Context, fail context.CancelFunc) error {
	var next *presenceSession
	err := l.publisherLink.Keep(ctx, nil, func(ctx context.Context) (*amqplink.Session, error) {
		s, err := l.openPublisher(ctx)
		if err != nil {
			return nil, err
		}
		next = s
		return s.Session, nil
	}, func(*amqplink.Session) error {
		s := next
		l.pub.Store(s)
		l.signalPub()
		l.log.Info("presence publisher connected", "node", s.Node()+1, "addr", s.Addr())
		var err error
		select {
		case <-ctx.Done():
		case <-s.conf.Done():
			err = fmt.Errorf("consumer: presence: %w", s.conf.Err())
		}
		l.pub.Store(nil)
		l.signalPub()
		s.Close()
		<-s.conf.Done()
		return err
	})
	if err != nil {
		fail()
	}
	return err
}

// signalPub tells Run's goroutine that pub changed, without blocking.
func (l *PresenceLink) signalPub() {
	select {
	case l.pubChanged <- struct{}{}:
	default:
	}
}

// syncState reports a change of Connected to OnStateChange, and when it became true,
// calls PresenceConnected. A publisher session replaced since the last report counts as
// a loss even when its successor is up already, so none goes unreported. Run's goroutine
// only.
func (l *PresenceLink) syncState() {
	pub := l.pub.Load()
	if l.reported != nil && (!l.consuming.Load() || pub != l.reported) {
		l.reported = nil
		l.log.Info("presence link disconnected")
		if l.cfg.OnStateChange != nil {
			l.cfg.OnStateChange(false)
		}
	}
	if l.reported == nil && l.consuming.Load() && pub != nil {
		l.reported = pub
		l.log.Info("presence link connected")
		if l.cfg.OnStateChange != nil {
			l.cfg.OnStateChange(true)
		}
		l.h.PresenceConnected()
	}
}

// presenceClassify marks err as refused for good (amqplink.Permanent) when the broker
// closed the channel with ACCESS_REFUSED or PRECONDITION_FAILED (amqplink.Refused). It is
// meant for declares and the like, not for the handshake, where a refusal may pass (a
// connection limit).
func presenceClassify(err error) error {
	if amqplink.Refused(err) {
		return amqplink.Permanent(err)
	}
	return err
}

// presenceSession is one connection and channel of the link: the consumer's (queue and
// deliveries set) or the publisher's (conf set: its channel in confirm mode). It is
// owned by the goroutine that opened it; Send publishes through conf, which is safe for
// that.
type presenceSession struct {
	*amqplink.Session

	// Consumer sessions.
	queue      string
	deliveries <-chan amqp.Delivery

	// Publisher sessions.
	conf *amqplink.Confirmer
}

// open connects one of the link's connections, opens a channel, declares the exchange
// and calls setup. Until it returns, cancelling ctx (or the link's CallTimeout) closes
// the socket, which ends the handshake or any RPC at once. On error, whatever was opened
// is closed.
func (l *PresenceLink) open(ctx context.Context, link *amqplink.Link, role string, setup func(*presenceSession) error) (*presenceSession, error) {
	ps := &presenceSession{}
	s, err := link.Open(ctx, func(s *amqplink.Session) error {
		ps.Session = s
		if err := s.Ch.ExchangeDeclare(l.cfg.Exchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
			return presenceClassify(fmt.Errorf("consumer: presence %s: declare exchange %q: %w", role, l.cfg.Exchange, err))
		}
		if err := setup(ps); err != nil {
			return presenceClassify(fmt.Errorf("consumer: presence %s: %w", role, err))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	ps.Session = s
	return ps, nil
}

// openConsumer opens a consumer session: a new queue of its own, bound to the exchange
// and consumed.
func (l *PresenceLink) openConsumer(ctx context.Context) (*presenceSession, error) {
	return l.open(ctx, l.consumerLink, "consumer", func(s *presenceSession) error {
		q, err := s.Ch.QueueDeclare("", false, true, true, false, l.cfg.queueArgs())
		if err != nil {
			return fmt.Errorf("declare queue: %w", err)
		}
		s.queue = q.Name
		s.NotifyCancel()
		if err := s.Ch.QueueBind(q.Name, "", l.cfg.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %q to exchange %q: %w", q.Name, l.cfg.Exchange, err)
		}
		if err := s.Ch.Qos(l.prefetch, 0, false); err != nil {
			return fmt.Errorf("set prefetch %d: %w", l.prefetch, err)
		}
		if s.deliveries, err = s.Ch.Consume(q.Name, "", false, true, false, false, nil); err != nil {
			return fmt.Errorf("consume queue %q: %w", q.Name, err)
		}
		return nil
	})
}

// openPublisher opens a publisher session: its channel in confirm mode.
func (l *PresenceLink) openPublisher(ctx context.Context) (*presenceSession, error) {
	return l.open(ctx, l.publisherLink, "publisher", func(s *presenceSession) error {
		var err error
		s.conf, err = amqplink.NewConfirmer(s.Session, l.log)
		return err
	})
}

// consume reads the session's deliveries until the channel closes or ctx ends, then
// closes the session. It returns why the deliveries ended, or nil when ctx ended. Run's
// goroutine; it reports the publisher's changes of state as they come (syncState).
//
// Deliveries are acked with multiple=true every prefetch/2 of them, or as soon as no
// further delivery is waiting, so the unacked count never reaches the prefetch and a slow
// handler leaves the rest in the queue.
func (l *PresenceLink) consume(ctx context.Context, s *presenceSession) error {
	defer s.Close()
	acks := newBatchAcker(s.Ch, l.prefetch, l.log)
	for {
		if ctx.Err() != nil {
			return nil
		}
		var d amqp.Delivery
		var ok bool
		select {
		case <-l.pubChanged:
			l.syncState()
			continue
		case d, ok = <-s.deliveries:
		default:
			acks.flush() // nothing is waiting: return the credit before blocking
			select {
			case <-l.pubChanged:
				l.syncState()
				continue
			case d, ok = <-s.deliveries:
			case <-ctx.Done():
				return nil
			}
		}
		if !ok {
			return s.CloseReason("consumer: presence")
		}
		l.h.HandlePresence(d.Body)
		acks.add(d.DeliveryTag)
	}
}

// Send publishes body to the exchange (content type application/json, transient, type
// "herald.presence") on the publisher connection, and returns nil once the broker has
// confirmed it: it is then in the queue of every gateway whose link is connected, this
// one's included, and is delivered unless TTL or MaxQueued drop it first.
// Otherwise the error wraps ErrPresenceUnavailable and the cause: at once when the link
// is not connected (before Run has connected, while it reconnects, after it returned) or
// the broker is blocking publishes; or when the publisher connection is lost before the
// confirm, the broker nacks, or ctx or SendTimeout ends first. Send is safe for
// concurrent use; it may be called from the handler.
func (l *PresenceLink) Send(ctx context.Context, body []byte) error {
	s := l.pub.Load()
	if s == nil || !l.consuming.Load() {
		return fmt.Errorf("consumer: presence: send: %w: %w", ErrPresenceUnavailable, producer.ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(ctx, l.cfg.SendTimeout)
	defer cancel()
	err := s.conf.Publish(ctx, l.cfg.Exchange, "", false, amqp.Publishing{
		ContentType:  presenceContentType,
		DeliveryMode: amqp.Transient,
		Type:         presenceType,
		Body:         body,
	})
	if err != nil {
		return fmt.Errorf("consumer: presence: send: %w: %w", ErrPresenceUnavailable, err)
	}
	return nil
}
