package consumer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/amqplink"
)

// probeDeleteTimeout bounds the deletion of a probe's stream, which runs even when the
// probe's own context has ended.
const probeDeleteTimeout = 5 * time.Second

// The headers of a probe's message: one of each kind of value whose fate in a stream the
// probe finds out, and a string, which every broker keeps, to tell a broker that drops a
// kind from a message that lost all its headers.
const (
	probeHeaderArray  = "herald-probe-array"
	probeHeaderTable  = "herald-probe-table"
	probeHeaderString = "herald-probe-string"
)

// ErrProbeStreamLeft is returned, wrapped, by ProbeHeaders when it found its answer but
// could not delete its stream: the answer holds, and the stream named in the error is
// left for an operator to delete.
var ErrProbeStreamLeft = errors.New("the probe's stream could not be deleted")

// HeaderSupport is what the broker does to header values of two kinds on their way
// through a stream. RabbitMQ 3.10 stores a stream message's headers as AMQP 1.0
// application properties, which hold neither, and drops them without a word; newer
// versions keep them. An AMQP array in the users header is then lost, and the message
// reaches every subscriber of its channel: publishers must send users as a string holding
// a JSON array (PROTOCOL.md section 3).
type HeaderSupport struct {
	Arrays bool // an array-valued header (amqplib's natural headers: {users: ['alice']}) is kept
	Tables bool // a table-valued (nested) header is kept
	// Stream is the probe's own stream, declared for the probe and deleted before
	// ProbeHeaders returned.
	Stream string
}

// ProbeHeaders finds out whether the broker keeps an array-valued and a table-valued
// header through a stream. It declares a stream of its own with a unique name (the
// configured stream's name, ".probe.", random hex), publishes one message to it through
// the default exchange with the stream's name as routing key, reads it back and deletes
// the stream. The probe's stream is bound to no exchange, so no consumer of Herald's
// exchange or stream sees the message. It runs on a connection of its own (the "probe"
// link), which ctx or the link's CallTimeout closes when it ends (so the probe never
// outlives either), and it deletes its stream on every path, on another connection
// bounded by probeDeleteTimeout. It returns an error
// when it could not find the answer; one that matches ErrProbeStreamLeft comes with the
// answer.
func (s *Stream) ProbeHeaders(ctx context.Context) (HeaderSupport, error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	hs := HeaderSupport{Stream: s.cfg.Stream + ".probe." + hex.EncodeToString(b[:])}
	if s.cfgErr != nil {
		return HeaderSupport{}, s.cfgErr
	}
	var got amqp.Table
	ps, err := s.probeLink.Open(ctx, func(ps *amqplink.Session) error {
		var err error
		got, err = s.probeStream(ctx, ps.Ch, hs.Stream)
		return err
	})
	if ps != nil {
		ps.Close()
	}
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("consumer: header probe: %w: %w", ctx.Err(), err)
	}
	if err == nil {
		_, str := got[probeHeaderString].(string)
		_, hs.Arrays = got[probeHeaderArray].([]interface{})
		_, hs.Tables = got[probeHeaderTable].(amqp.Table)
		if !str {
			err = fmt.Errorf("consumer: header probe: the probe's message came back without its string header (%d headers): cannot tell", len(got))
		}
	}

	del, cancel := context.WithTimeout(context.Background(), probeDeleteTimeout)
	defer cancel()
	ds, derr := s.probeLink.Open(del, func(ds *amqplink.Session) error {
		_, err := ds.Ch.QueueDelete(hs.Stream, false, false, false)
		return err
	})
	if ds != nil {
		ds.Close()
	}
	s.probeLink.Wait()
	switch {
	case derr == nil:
	case err == nil:
		err = fmt.Errorf("consumer: header probe: delete stream %q: %w: %w", hs.Stream, ErrProbeStreamLeft, derr)
	default:
		err = errors.Join(err, fmt.Errorf("consumer: header probe: delete stream %q: %w: %w", hs.Stream, ErrProbeStreamLeft, derr))
	}
	if err != nil && !errors.Is(err, ErrProbeStreamLeft) {
		return HeaderSupport{Stream: hs.Stream}, err
	}
	return hs, err
}

// probeStream declares the probe's stream, publishes its message with confirms, and returns the
// headers it comes back with. ch belongs to a session that ctx closes when it ends.
func (s *Stream) probeStream(ctx context.Context, ch *amqp.Channel, name string) (amqp.Table, error) {
	args := amqp.Table{"x-queue-type": "stream", "x-max-length-bytes": int64(1 << 20), "x-max-age": "1h"}
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		return nil, fmt.Errorf("consumer: header probe: declare stream %q: %w", name, err)
	}
	if s.probeHook != nil {
		s.probeHook(ctx, name)
	}
	if err := ch.Confirm(false); err != nil {
		return nil, fmt.Errorf("consumer: header probe: confirm mode: %w", err)
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", name, true, false, amqp.Publishing{
		Headers: amqp.Table{
			probeHeaderArray:  []interface{}{"herald"},
			probeHeaderTable:  amqp.Table{"herald": "probe"},
			probeHeaderString: "herald",
		},
		ContentType: producer.ContentType,
		Body:        []byte(`{}`),
	})
	if err != nil {
		return nil, fmt.Errorf("consumer: header probe: publish: %w", err)
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		return nil, fmt.Errorf("consumer: header probe: publish not confirmed (ack %v): %w", ok, err)
	}
	if err := ch.Qos(1, 0, false); err != nil {
		return nil, fmt.Errorf("consumer: header probe: set prefetch: %w", err)
	}
	deliveries, err := ch.Consume(name, "", false, false, false, false, amqp.Table{producer.HeaderStreamOffset: "first"})
	if err != nil {
		return nil, fmt.Errorf("consumer: header probe: consume %q: %w", name, err)
	}
	select {
	case d, ok := <-deliveries:
		if !ok {
			return nil, errors.New("consumer: header probe: the channel closed before the message came back")
		}
		return d.Headers, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("consumer: header probe: waiting for the message: %w", ctx.Err())
	}
}
