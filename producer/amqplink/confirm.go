package amqplink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Errors a publish through a Confirmer can end with besides the context's. Callers match
// them with errors.Is; package producer exports them under the same names.
var (
	// ErrUnavailable means there is no connection to the broker, or the connection or
	// channel was lost before the broker confirmed the message, or the broker is blocking
	// publishes. The broker may or may not have the message; retrying with the same id is
	// safe (gateways deduplicate).
	ErrUnavailable = errors.New("not connected to the broker")
	// ErrNacked means the broker refused the message (basic.nack): a bound queue that
	// rejects publishes, or a stream that cannot take writes now (no majority of its
	// replicas online). Retrying with the same id is safe.
	ErrNacked = errors.New("the broker nacked the message")
	// ErrReturned means the broker returned a mandatory message as unroutable: nothing
	// is bound to the exchange.
	ErrReturned = errors.New("the broker returned the message as unroutable")
)

// confirmBuffer is how many confirms may wait for a Confirmer's event goroutine; amqp091
// drops a notification that its listener does not take within 5s, so the buffer absorbs
// bursts of acks while the event goroutine briefly waits for mu.
const confirmBuffer = 256

// Confirmer publishes on a session's channel in confirm mode and tells each publisher the
// broker's verdict on its message. It is the one publisher with confirms of every link
// (the producer's, the presence link's, the gateway's canary). A Confirmer dies with its
// channel: its owner opens a new session and a new Confirmer.
//
// Its event goroutine (run) is the only receiver of the channel's returns and confirms,
// and resolves pending publishes. Returns arrive on an unbuffered Go channel, so the
// event goroutine holds a message's basic.return before amqp091's reader goroutine moves
// on to the basic.ack that RabbitMQ sends after it: when the event goroutine handles a
// message's ack, it has always handled its return.
type Confirmer struct {
	ch  *amqp.Channel
	log *slog.Logger

	// Registered in NewConfirmer and received from only by the event goroutine.
	returns  <-chan amqp.Return
	confirms <-chan amqp.Confirmation
	blocks   <-chan amqp.Blocking
	closes   <-chan *amqp.Error

	// sendLock is a one-slot semaphore (a channel, so that waiting for it respects ctx)
	// held from reading the channel's next delivery tag until the publish is sent: the
	// tag a publish registers under is then the tag the channel gives it, and it is
	// registered before the broker can confirm it. amqp091 serialises publishes on a
	// channel anyway, so this costs no concurrency.
	sendLock chan struct{}

	// blocked is true while the broker blocks the connection (a resource alarm); written
	// by the event goroutine, read by publishers.
	blocked atomic.Bool

	// mu protects pending and dead.
	mu sync.Mutex
	// pending holds the publishes waiting for the broker, by delivery tag. Whoever
	// removes an entry (the event goroutine, or a publisher giving up) resolves it.
	pending map[uint64]*pendingPublish
	// dead is set by the event goroutine once the channel has closed; no publish may
	// register after that.
	dead bool

	// done is closed by the event goroutine when the channel has closed and every
	// pending publish has failed; err, written before, says why the channel closed.
	done chan struct{}
	err  error
}

// pendingPublish is one publish waiting for the broker's confirm.
type pendingPublish struct {
	id string
	// returned is the broker's reason when it returned the message (set by the event
	// goroutine under Confirmer.mu), "" otherwise.
	returned string
	// result receives the outcome exactly once (it has room for it, so the sender never
	// blocks).
	result chan error
}

// NewConfirmer registers its listeners on s's channel, puts it in confirm mode and
// starts its event goroutine, which ends when the channel closes (Done). Nothing else may
// publish on s.Ch. Call it within s's setup, or bound it with s.Guard.
func NewConfirmer(s *Session, log *slog.Logger) (*Confirmer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Confirmer{
		ch:       s.Ch,
		log:      log,
		returns:  s.Ch.NotifyReturn(make(chan amqp.Return)), // unbuffered: see the type's comment
		confirms: s.Ch.NotifyPublish(make(chan amqp.Confirmation, confirmBuffer)),
		blocks:   s.Connection.NotifyBlocked(make(chan amqp.Blocking, 4)),
		closes:   s.Ch.NotifyClose(make(chan *amqp.Error, 1)),
		sendLock: make(chan struct{}, 1),
		pending:  make(map[uint64]*pendingPublish),
		done:     make(chan struct{}),
	}
	go c.run()
	if err := s.Ch.Confirm(false); err != nil {
		return c, fmt.Errorf("enable confirms: %w", err)
	}
	return c, nil
}

// Done returns a channel that is closed once the Confirmer's channel has closed and
// every publish waiting on it has failed; Err then says why.
func (c *Confirmer) Done() <-chan struct{} { return c.done }

// Err says why the channel closed, once Done is closed.
func (c *Confirmer) Err() error { return c.err }

// Blocked reports whether the broker blocks publishing now (a resource alarm).
func (c *Confirmer) Blocked() bool { return c.blocked.Load() }

// Publish sends msg to exchange with routing key key and waits for the broker's
// verdict: nil on ack, else an error wrapping ErrNacked, ErrReturned (mandatory only),
// ErrUnavailable or ctx's error. It is called by any number of goroutines at once.
func (c *Confirmer) Publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) error {
	if c.blocked.Load() {
		return fmt.Errorf("%w: the broker is blocking publishes (resource alarm)", ErrUnavailable)
	}
	select {
	case c.sendLock <- struct{}{}:
	case <-c.done:
		return fmt.Errorf("%w: %v", ErrUnavailable, c.err)
	case <-ctx.Done():
		return fmt.Errorf("waiting to send: %w", ctx.Err())
	}
	pp := &pendingPublish{id: msg.MessageId, result: make(chan error, 1)}
	tag := c.ch.GetNextPublishSeqNo()
	if !c.register(tag, pp) {
		<-c.sendLock
		return fmt.Errorf("%w: the channel is closed", ErrUnavailable)
	}
	dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, mandatory, false, msg)
	<-c.sendLock
	switch {
	case err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()):
		c.forget(tag, pp)
		return fmt.Errorf("send: %w", err) // not sent
	case err != nil:
		c.forget(tag, pp)
		return fmt.Errorf("%w: send: %w", ErrUnavailable, err)
	case dc == nil || dc.DeliveryTag != tag:
		// Impossible while this Confirmer is the channel's only publisher.
		c.forget(tag, pp)
		return fmt.Errorf("send: got delivery tag %v, want %d: cannot match the confirm", dc, tag)
	}

	select {
	case err := <-pp.result:
		return err
	case <-ctx.Done():
		if c.forget(tag, pp) {
			return fmt.Errorf("waiting for the broker's confirm: %w", ctx.Err())
		}
		return <-pp.result // resolved meanwhile
	}
}

// register adds pp as pending under tag, unless the channel has closed.
func (c *Confirmer) register(tag uint64, pp *pendingPublish) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return false
	}
	c.pending[tag] = pp
	return true
}

// forget removes pp from pending, and reports whether it was still there (when it was
// not, its result has been sent).
func (c *Confirmer) forget(tag uint64, pp *pendingPublish) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending[tag] != pp {
		return false
	}
	delete(c.pending, tag)
	return true
}

// run is the event goroutine. It takes the channel's returns, confirms and the
// connection's blocked notices until the channel closes, then fails whatever is still
// pending with ErrUnavailable and closes done.
func (c *Confirmer) run() {
	returns, confirms, blocks := c.returns, c.confirms, c.blocks
	for returns != nil || confirms != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			c.returned(r)
		case cf, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			c.confirmed(cf)
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			c.blocked.Store(b.Active)
			if b.Active {
				c.log.Warn("amqp publisher: the broker blocked publishing", "reason", b.Reason)
			} else {
				c.log.Info("amqp publisher: the broker unblocked publishing")
			}
		}
	}

	// amqp091 sends the close reason, if any, before it closes the notify channels.
	err := errors.New("channel closed")
	select {
	case e := <-c.closes:
		if e != nil {
			err = fmt.Errorf("channel closed: %w", e)
		}
	default:
	}
	c.err = err
	c.mu.Lock()
	c.dead = true
	for tag, pp := range c.pending {
		delete(c.pending, tag)
		pp.result <- fmt.Errorf("%w: lost before the broker confirmed: %v", ErrUnavailable, err)
	}
	c.mu.Unlock()
	close(c.done)
}

// returned marks the oldest pending publish with the returned message's id as returned;
// its ack follows. A return names no delivery tag, only the message's properties: where
// several publishes of one id are in flight and only some are routed (a queue was bound
// or unbound meanwhile), the oldest is told it was returned, which may be another copy of
// the same message; a message is known by its id, so its publishers are still told
// correctly that it was routed at least once.
func (c *Confirmer) returned(r amqp.Return) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Returns are rare (nothing is bound to the exchange), so a scan beats an index.
	var oldest *pendingPublish
	var oldestTag uint64
	for tag, pp := range c.pending {
		if pp.id == r.MessageId && pp.returned == "" && (oldest == nil || tag < oldestTag) {
			oldest, oldestTag = pp, tag
		}
	}
	if oldest == nil {
		c.log.Debug("amqp publisher: return for no pending publish", "id", r.MessageId, "reply", r.ReplyText)
		return
	}
	oldest.returned = fmt.Sprintf("%d %s", r.ReplyCode, r.ReplyText)
}

// confirmed resolves the publish with the confirm's delivery tag, if it still waits.
func (c *Confirmer) confirmed(cf amqp.Confirmation) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pp, ok := c.pending[cf.DeliveryTag]
	if !ok {
		return // its publisher gave up
	}
	delete(c.pending, cf.DeliveryTag)
	switch {
	case !cf.Ack:
		pp.result <- ErrNacked
	case pp.returned != "":
		pp.result <- fmt.Errorf("%w (%s)", ErrReturned, pp.returned)
	default:
		pp.result <- nil
	}
}
