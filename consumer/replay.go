package consumer

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/message"
	"github.com/heraldgw/herald/producer/redact"
)

const (
	// replayPrefetch bounds the messages one replay holds unacknowledged: its memory.
	replayPrefetch = 256
	// maxReplays bounds the replays running at once on one gateway; more wait their turn.
	maxReplays = 256
)

// Replay reads the stream after offset since for a client that resumes: it attaches a
// consumer of its own at since+1 (since -1: the first retained message) and calls fn
// with each message in offset order until fn returns false or ctx ends. A message that
// cannot be decoded comes with only its Offset set and nil Data, so that the reader sees
// the offsets stay contiguous without delivering it. Where since+1 is no longer retained,
// the first message is a later one.
//
// Replays share one connection of their own, so that a crowd of resuming clients does not
// slow the live consumer; at most maxReplays run at once.
func (s *Stream) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
	select {
	case s.replaySlots <- struct{}{}:
		defer func() { <-s.replaySlots }()
	case <-ctx.Done():
		return fmt.Errorf("consumer: replay: %w", ctx.Err())
	}
	ch, err := s.replayChannel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Qos(replayPrefetch, 0, false); err != nil {
		return fmt.Errorf("consumer: replay: set prefetch: %w", err)
	}
	var from any = since + 1
	if since < 0 {
		from = "first"
	}
	deliveries, err := ch.Consume(s.cfg.Stream, "", false, false, false, false,
		amqp.Table{producer.HeaderStreamOffset: from})
	if err != nil {
		return fmt.Errorf("consumer: replay: consume %q at %v: %w", s.cfg.Stream, from, err)
	}
	unacked := 0
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("consumer: replay: %w", ctx.Err())
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("consumer: replay: the channel closed")
			}
			if unacked++; unacked >= replayPrefetch/2 {
				if err := d.Ack(true); err != nil {
					return fmt.Errorf("consumer: replay: ack: %w", err)
				}
				unacked = 0
			}
			off, ok := streamDeliveryOffset(d)
			if !ok {
				continue // not from a stream: nothing to place it by
			}
			// Headers that cannot be read were counted and logged when the live consumer
			// met them; here the message is read the same way, without a word.
			m, _, err := producer.Decode(d)
			if err != nil {
				m = message.Message{Offset: off}
			}
			if !fn(m) {
				return nil
			}
		}
	}
}

// replayChannel opens a channel on the replay connection, dialling it first if needed.
func (s *Stream) replayChannel() (*amqp.Channel, error) {
	s.replayMu.Lock()
	defer s.replayMu.Unlock()
	if s.replayConn == nil || s.replayConn.IsClosed() {
		props := amqp.NewConnectionProperties()
		props.SetClientConnectionName(s.cfg.Name + "-replay")
		conn, err := amqp.DialConfig(s.cfg.URL, amqp.Config{
			Properties: props,
			Heartbeat:  amqpHeartbeat,
			Dial:       amqp.DefaultDial(amqpDialTimeout),
		})
		if err != nil {
			return nil, fmt.Errorf("consumer: replay: connect: %w", redact.Error(err, s.cfg.URL))
		}
		s.replayConn = conn
	}
	ch, err := s.replayConn.Channel()
	if err != nil {
		return nil, fmt.Errorf("consumer: replay: open channel: %w", err)
	}
	return ch, nil
}

// closeReplays closes the replay connection, ending every replay.
func (s *Stream) closeReplays() {
	s.replayMu.Lock()
	defer s.replayMu.Unlock()
	if s.replayConn != nil {
		_ = s.replayConn.Close()
		s.replayConn = nil
	}
}

// Head estimates the newest offset in the stream: it attaches a consumer at "last", which
// RabbitMQ starts at the first message of the stream's last chunk, and reads that offset
// (so it may be behind the newest by the rest of that chunk). It reports false when the
// stream is empty, the broker is away or ctx ends first.
func (s *Stream) Head(ctx context.Context) (int64, bool) {
	return s.probe(ctx, "last")
}

// probe attaches a consumer at offset spec from and returns the offset of its first
// delivery.
func (s *Stream) probe(ctx context.Context, from string) (int64, bool) {
	ch, err := s.replayChannel()
	if err != nil {
		return 0, false
	}
	defer ch.Close()
	if err := ch.Qos(1, 0, false); err != nil {
		return 0, false
	}
	deliveries, err := ch.Consume(s.cfg.Stream, "", false, false, false, false,
		amqp.Table{producer.HeaderStreamOffset: from})
	if err != nil {
		return 0, false
	}
	select {
	case d, ok := <-deliveries:
		if !ok {
			return 0, false
		}
		return streamDeliveryOffset(d)
	case <-ctx.Done():
		return 0, false
	}
}

// Oldest returns the offset of the oldest message the stream retains: the first delivery
// of a consumer attached at "first". It reports false when the stream is empty, the
// broker is away or ctx ends first.
func (s *Stream) Oldest(ctx context.Context) (int64, bool) {
	return s.probe(ctx, "first")
}
