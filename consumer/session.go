package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/redact"
)

// Limits of the AMQP connections of this package (the stream consumer's, the replays'
// and the presence link's), and the defaults of their reconnect backoff.
const (
	amqpDialTimeout    = 10 * time.Second
	amqpHandshakeLimit = 15 * time.Second // TCP, TLS and AMQP handshakes together
	amqpHeartbeat      = 10 * time.Second
	amqpCloseTimeout   = 5 * time.Second

	// The defaults of StreamConfig's and PresenceConfig's ReconnectMin and ReconnectMax.
	defaultReconnectMin = 100 * time.Millisecond
	defaultReconnectMax = 10 * time.Second
)

// amqpSession is one AMQP connection and one channel on it, with the notify channels that
// say why either closed. The stream consumer's and the presence link's sessions embed it.
// It is owned by the goroutine that dials it, which alone reads its notify channels and
// closes it; its channel's methods are safe for other goroutines too.
type amqpSession struct {
	raw        net.Conn // the TCP connection under conn, to bound the close handshake
	conn       *amqp.Connection
	ch         *amqp.Channel
	connClosed chan *amqp.Error
	chClosed   chan *amqp.Error
	// cancelled gets the tag of a consumer the broker cancels; set by a setup that
	// consumes (notifyCancel), nil otherwise.
	cancelled chan string
}

// dial connects to url with the connection name name, opens a channel and calls setup,
// which declares and consumes what the session needs on s.ch. Until dial returns,
// cancelling ctx closes the socket, which ends the handshake or any RPC at once. The
// errors of connecting and of opening the channel start with what ("consumer: connect:
// …"); setup's are returned as they are. On error, whatever was opened is closed. dial is
// called once, on the goroutine that will own s.
func (s *amqpSession) dial(ctx context.Context, url, name, what string, setup func() error) (err error) {
	stop := func() {}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(name)
	conn, err := amqp.DialConfig(url, amqp.Config{
		Properties: props,
		Heartbeat:  amqpHeartbeat,
		// Dial is called by DialConfig on this goroutine.
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{Timeout: amqpDialTimeout}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// DialConfig clears the deadline once the AMQP handshake is done.
			if err := c.SetDeadline(time.Now().Add(amqpHandshakeLimit)); err != nil {
				_ = c.Close()
				return nil, err
			}
			s.raw = c
			stop = closeOnCancel(ctx, c)
			return c, nil
		},
	})
	defer stop()
	if err != nil {
		return fmt.Errorf("%s: connect: %w", what, redact.Error(err, url))
	}
	s.conn = conn
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	s.connClosed = conn.NotifyClose(make(chan *amqp.Error, 1))
	if s.ch, err = conn.Channel(); err != nil {
		return fmt.Errorf("%s: open channel: %w", what, err)
	}
	s.chClosed = s.ch.NotifyClose(make(chan *amqp.Error, 1))
	return setup()
}

// notifyCancel registers s.cancelled, for closeReason; a setup that consumes calls it
// before it consumes.
func (s *amqpSession) notifyCancel() {
	s.cancelled = s.ch.NotifyCancel(make(chan string, 1))
}

// closeOnCancel closes c when ctx is done, until the returned stop is called. stop waits
// for a close that has already begun, so no goroutine outlives it.
func closeOnCancel(ctx context.Context, c net.Conn) (stop func()) {
	done := make(chan struct{})
	stopFunc := context.AfterFunc(ctx, func() {
		_ = c.Close()
		close(done)
	})
	return func() {
		if !stopFunc() {
			<-done
		}
	}
}

// close closes the channel and the connection, waiting at most amqpCloseTimeout for the
// broker to answer. Publishes waiting for a confirm are then nacked by amqp091. The
// owner's goroutine only.
func (s *amqpSession) close() {
	if s.raw != nil {
		_ = s.raw.SetDeadline(time.Now().Add(amqpCloseTimeout))
	}
	if s.ch != nil {
		_ = s.ch.Close()
	}
	if s.conn != nil {
		_ = s.conn.Close()
	}
}

// closeReason says why the session's connection or channel closed, or its consumer was
// cancelled, in an error that starts with what ("consumer: presence"). amqp091 sends the
// close error to the notify channels before it closes them and the deliveries channel.
// The owner's goroutine only.
func (s *amqpSession) closeReason(what string) error {
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

// batchAcker acks a consumer's deliveries with multiple=true, a batch at a time. Acks only
// return credit to the broker, so a batch is acked when it reaches half the prefetch, or
// when the consumer flushes it before it waits for more, and the unacked count never
// reaches the prefetch. It is owned by the goroutine that reads the deliveries.
type batchAcker struct {
	ch      *amqp.Channel
	log     *slog.Logger
	every   int    // the size of a full batch: half the prefetch, at least 1
	pending int    // deliveries handled and not acked yet
	last    uint64 // the delivery tag of the last of them
}

func newBatchAcker(ch *amqp.Channel, prefetch int, log *slog.Logger) batchAcker {
	return batchAcker{ch: ch, log: log, every: max(1, prefetch/2)}
}

// add records the delivery with tag as handled, and acks the batch once it is full.
func (a *batchAcker) add(tag uint64) {
	a.pending++
	a.last = tag
	if a.pending >= a.every {
		a.flush()
	}
}

// flush acks the deliveries handled since the last ack, if any.
func (a *batchAcker) flush() {
	if a.pending == 0 {
		return
	}
	// An error means the channel is closing; the deliveries channel will close next.
	if err := a.ch.Ack(a.last, true); err != nil {
		a.log.Debug("ack failed", "err", err)
	}
	a.pending = 0
}

// reconnectDefaults returns a config's ReconnectMin and ReconnectMax with the defaults for
// zero ones, and the maximum raised to the minimum when below it.
func reconnectDefaults(lo, hi time.Duration) (time.Duration, time.Duration) {
	if lo == 0 {
		lo = defaultReconnectMin
	}
	if hi == 0 {
		hi = defaultReconnectMax
	}
	return lo, max(lo, hi)
}

// backoff returns the delay before reconnect attempt n (from 0): drawn uniformly from
// [0, min(hi, lo*2^n)] (exponential backoff with full jitter).
func backoff(n int, lo, hi time.Duration) time.Duration {
	ceil := hi
	if n < 32 {
		if d := lo << n; d > 0 && d < ceil {
			ceil = d
		}
	}
	if ceil <= 0 {
		return 0
	}
	return rand.N(ceil + 1)
}
