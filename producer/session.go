package producer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// confirmBuffer is how many confirms may wait for a session's event goroutine; amqp091
// drops a notification that its listener does not take within 5s, so the buffer
// absorbs bursts of acks while the event goroutine briefly waits for session.mu.
const confirmBuffer = 256

// session is one AMQP connection with one channel in confirm mode, and the bookkeeping
// that matches the broker's returns and confirms to the publishes waiting for them.
// A session is never reused: when its channel closes, the Publisher opens a new one.
//
// Its event goroutine (run) is the only receiver of the channel's returns and
// confirms, and resolves pending publishes. Returns arrive on an unbuffered Go channel,
// so the event goroutine holds a message's basic.return before amqp091's reader
// goroutine moves on to the basic.ack that RabbitMQ sends after it: when the event
// goroutine handles a message's ack, it has always handled its return.
type session struct {
	conn *amqp.Connection
	ch   *amqp.Channel
	log  *slog.Logger

	// Registered in newSession and received from only by the event goroutine.
	returns  <-chan amqp.Return
	confirms <-chan amqp.Confirmation
	blocks   <-chan amqp.Blocking
	closes   <-chan *amqp.Error

	// sendLock is a one-slot semaphore (a channel, so that waiting for it respects
	// ctx) held from reading the channel's next delivery tag until the publish is
	// sent: the tag a publish registers under is then the tag the channel gives it,
	// and it is registered before the broker can confirm it. amqp091 serialises
	// publishes on a channel anyway, so this costs no concurrency.
	sendLock chan struct{}

	// blocked is true while the broker blocks the connection (a resource alarm);
	// written by the event goroutine, read by publishers.
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
	// goroutine under session.mu), "" otherwise.
	returned string
	// result receives the outcome exactly once (it has room for it, so the sender
	// never blocks).
	result chan error
}

// newSession opens a channel on conn and registers the session's listeners on it. The
// caller starts run, and then puts the channel in confirm mode.
func newSession(conn *amqp.Connection, log *slog.Logger) (*session, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	return &session{
		conn:     conn,
		ch:       ch,
		log:      log,
		returns:  ch.NotifyReturn(make(chan amqp.Return)), // unbuffered: see the type's comment
		confirms: ch.NotifyPublish(make(chan amqp.Confirmation, confirmBuffer)),
		blocks:   conn.NotifyBlocked(make(chan amqp.Blocking, 4)),
		closes:   ch.NotifyClose(make(chan *amqp.Error, 1)),
		sendLock: make(chan struct{}, 1),
		pending:  make(map[uint64]*pendingPublish),
		done:     make(chan struct{}),
	}, nil
}

// publish sends msg to exchange as mandatory and waits for the broker's verdict: nil
// on ack, else an error wrapping ErrNacked, ErrReturned, ErrUnavailable or ctx's error.
// It is called by any number of goroutines at once.
func (s *session) publish(ctx context.Context, exchange string, msg amqp.Publishing) error {
	if s.blocked.Load() {
		return fmt.Errorf("%w: the broker is blocking publishes (resource alarm)", ErrUnavailable)
	}
	select {
	case s.sendLock <- struct{}{}:
	case <-s.done:
		return fmt.Errorf("%w: %v", ErrUnavailable, s.err)
	case <-ctx.Done():
		return fmt.Errorf("waiting to send: %w", ctx.Err())
	}
	pp := &pendingPublish{id: msg.MessageId, result: make(chan error, 1)}
	tag := s.ch.GetNextPublishSeqNo()
	if !s.register(tag, pp) {
		<-s.sendLock
		return fmt.Errorf("%w: the channel is closed", ErrUnavailable)
	}
	dc, err := s.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, "", true, false, msg)
	<-s.sendLock
	switch {
	case err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()):
		s.forget(tag, pp)
		return fmt.Errorf("send: %w", err) // not sent
	case err != nil:
		s.forget(tag, pp)
		return fmt.Errorf("%w: send: %w", ErrUnavailable, err)
	case dc == nil || dc.DeliveryTag != tag:
		// Impossible while this session is the channel's only publisher.
		s.forget(tag, pp)
		return fmt.Errorf("send: got delivery tag %v, want %d: cannot match the confirm", dc, tag)
	}

	select {
	case err := <-pp.result:
		return err
	case <-ctx.Done():
		if s.forget(tag, pp) {
			return fmt.Errorf("waiting for the broker's confirm: %w", ctx.Err())
		}
		return <-pp.result // resolved meanwhile
	}
}

// register adds pp as pending under tag, unless the channel has closed.
func (s *session) register(tag uint64, pp *pendingPublish) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return false
	}
	s.pending[tag] = pp
	return true
}

// forget removes pp from pending, and reports whether it was still there (when it was
// not, its result has been sent).
func (s *session) forget(tag uint64, pp *pendingPublish) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[tag] != pp {
		return false
	}
	delete(s.pending, tag)
	return true
}

// run is the session's event goroutine. It takes the channel's returns, confirms and
// the connection's blocked notices until the channel closes, then fails whatever is
// still pending with ErrUnavailable and closes done.
func (s *session) run() {
	returns, confirms, blocks := s.returns, s.confirms, s.blocks
	for returns != nil || confirms != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			s.returned(r)
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			s.confirmed(c)
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			s.blocked.Store(b.Active)
			if b.Active {
				s.log.Warn("producer: the broker blocked publishing", "reason", b.Reason)
			} else {
				s.log.Info("producer: the broker unblocked publishing")
			}
		}
	}

	// amqp091 sends the close reason, if any, before it closes the notify channels.
	s.err = errors.New("channel closed")
	select {
	case e := <-s.closes:
		if e != nil {
			s.err = fmt.Errorf("channel closed: %w", e)
		}
	default:
	}
	s.mu.Lock()
	s.dead = true
	for tag, pp := range s.pending {
		delete(s.pending, tag)
		pp.result <- fmt.Errorf("%w: lost before the broker confirmed: %v", ErrUnavailable, s.err)
	}
	s.mu.Unlock()
	close(s.done)
}

// returned marks the oldest pending publish with the returned message's id as
// returned; its ack follows. A return names no delivery tag, only the message's
// properties: where several publishes of one id are in flight and only some are
// routed (a queue was bound or unbound meanwhile), the oldest is told it was returned,
// which may be another copy of the same message; a message is known by its id, so its
// publishers are still told correctly that it was routed at least once.
func (s *session) returned(r amqp.Return) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Returns are rare (nothing is bound to the exchange), so a scan beats an index.
	var oldest *pendingPublish
	var oldestTag uint64
	for tag, pp := range s.pending {
		if pp.id == r.MessageId && pp.returned == "" && (oldest == nil || tag < oldestTag) {
			oldest, oldestTag = pp, tag
		}
	}
	if oldest == nil {
		s.log.Debug("producer: return for no pending publish", "id", r.MessageId, "reply", r.ReplyText)
		return
	}
	oldest.returned = fmt.Sprintf("%d %s", r.ReplyCode, r.ReplyText)
}

// confirmed resolves the publish with the confirm's delivery tag, if it still waits.
func (s *session) confirmed(c amqp.Confirmation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pp, ok := s.pending[c.DeliveryTag]
	if !ok {
		return // its publisher gave up
	}
	delete(s.pending, c.DeliveryTag)
	switch {
	case !c.Ack:
		pp.result <- ErrNacked
	case pp.returned != "":
		pp.result <- fmt.Errorf("%w (%s)", ErrReturned, pp.returned)
	default:
		pp.result <- nil
	}
}

// close closes the connection (and so the channel), waiting at most timeout for the
// broker, then waits for the event goroutine to end. Closing a connection that is
// already closed is not an error.
func (s *session) close(timeout time.Duration) error {
	err := s.conn.CloseDeadline(time.Now().Add(timeout))
	<-s.done
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
}
