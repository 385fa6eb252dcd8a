package amqplink

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Session is one connection of a link and one channel on it, with the notify channels
// that say why either closed. It is owned by the goroutine that opened it (or the one it
// was handed to), which alone reads its notify channels and closes it; the channel's
// methods are safe for other goroutines too.
type Session struct {
	*Conn
	// Ch is the session's channel.
	Ch *amqp.Channel

	connClosed chan *amqp.Error
	chClosed   chan *amqp.Error
	// cancelled gets the tag of a consumer the broker cancels; set by NotifyCancel.
	cancelled chan string
}

// Open dials the first node that answers (Dial), opens a channel and calls setup, which
// declares and consumes what the session needs on s.Ch. setup runs under Guard: when
// ctx ends or CallTimeout passes first, the socket is closed, which ends any call it is
// waiting on. On error, whatever was opened is closed; the errors of connecting and of
// opening the channel start with "amqp <link>:", setup's are returned as they are.
func (l *Link) Open(ctx context.Context, setup func(*Session) error) (_ *Session, err error) {
	c, err := l.Dial(ctx)
	if err != nil {
		return nil, err
	}
	s := &Session{Conn: c, connClosed: c.NotifyClose(make(chan *amqp.Error, 1))}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	stop := c.Guard(ctx)
	defer stop()
	if s.Ch, err = c.Channel(); err != nil {
		return nil, fmt.Errorf("amqp %s: open channel on node %d: %w", l.cfg.Link, c.node+1, err)
	}
	s.chClosed = s.Ch.NotifyClose(make(chan *amqp.Error, 1))
	if setup != nil {
		if err = setup(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// NotifyCancel makes CloseReason report a consumer the broker cancels (its queue or
// stream was deleted); a setup that consumes calls it before it consumes.
func (s *Session) NotifyCancel() {
	s.cancelled = s.Ch.NotifyCancel(make(chan string, 1))
}

// Closed returns a channel that is closed once the session's channel has closed.
func (s *Session) Closed() <-chan *amqp.Error { return s.chClosed }

// Close closes the channel and the connection, waiting at most closeTimeout for the
// node to answer. Publishes waiting for a confirm are then nacked by amqp091. The
// owner's goroutine only.
func (s *Session) Close() {
	if s.Conn == nil {
		return
	}
	// The channel goes with the connection: no close-ok to wait for on a node that may
	// not answer.
	_ = s.Conn.Close()
}

// CloseReason says why the session's connection or channel closed, or its consumer was
// cancelled, in an error that starts with what ("consumer: presence"). amqp091 sends the
// close error to the notify channels before it closes them and the deliveries channel.
// The owner's goroutine only, once the channel has closed.
func (s *Session) CloseReason(what string) error {
	select {
	case tag, ok := <-s.cancelled: // closed, without a tag, when the channel closes
		if ok {
			return fmt.Errorf("%s: consumer %s cancelled by the broker (queue or stream deleted?)", what, tag)
		}
	default:
	}
	for _, c := range []chan *amqp.Error{s.chClosed, s.connClosed} {
		select {
		case e, ok := <-c:
			if ok && e != nil {
				return fmt.Errorf("%s: %w", what, e)
			}
		default:
		}
	}
	return errors.New(what + ": channel closed")
}

// permanentError marks an error that the broker will give again on every attempt.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that every attempt would give again (a configuration the
// broker refuses), so that Keep stops and returns it instead of retrying. nil stays nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Refused reports whether err is the broker closing a channel with ACCESS_REFUSED (no
// permission on that name) or PRECONDITION_FAILED (an exchange or queue of that name
// with other properties or arguments, or arguments it does not take): a refusal that a
// declare meets again on every attempt. Not for the handshake, where a refusal may pass
// (a connection limit).
func Refused(err error) bool {
	var aerr *amqp.Error
	return errors.As(err, &aerr) && aerr.Server &&
		(aerr.Code == amqp.AccessRefused || aerr.Code == amqp.PreconditionFailed)
}
