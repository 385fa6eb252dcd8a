package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/amqplink"
	"github.com/heraldgw/herald/producer/message"
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
// cannot be decoded, and a control message (producer.HeaderControl), comes with only its
// Offset set and nil Data, so that the reader sees the offsets stay contiguous without
// delivering it. Where since+1 is no longer retained, the first message is a later one.
//
// Replays share one connection of their own (the "replay" link, on the first node of the
// list that answers), so that a crowd of resuming clients does not slow the live
// consumer; at most maxReplays run at once. Attaching is bounded by the link's
// CallTimeout; a node that stops answering ends every replay within 1.5 heartbeats.
func (s *Stream) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
	if s.cfgErr != nil {
		return s.cfgErr
	}
	select {
	case s.replaySlots <- struct{}{}:
		defer func() { <-s.replaySlots }()
	case <-ctx.Done():
		return fmt.Errorf("consumer: replay: %w", ctx.Err())
	}
	var from any = since + 1
	if since < 0 {
		from = "first"
	}
	ch, deliveries, err := s.replayConsume(ctx, replayPrefetch, from)
	if err != nil {
		return fmt.Errorf("consumer: replay: %w", err)
	}
	defer ch.Close()
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
			if _, control := d.Headers[producer.HeaderControl]; control {
				if !fn(message.Message{Offset: off}) {
					return nil
				}
				continue
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

// replayConsume opens a channel on the replay connection (dialling it first when there
// is none or it was lost), sets its prefetch and consumes the stream at from. The
// channel's setup is bounded by the link's CallTimeout: when it passes, the replay
// connection is closed (the node does not answer), which ends every call waiting on it.
// ctx ending does not close it: other replays share it.
func (s *Stream) replayConsume(ctx context.Context, prefetch int, from any) (*amqp.Channel, <-chan amqp.Delivery, error) {
	conn, err := s.replayConnection(ctx)
	if err != nil {
		return nil, nil, err
	}
	stop := conn.Guard(context.WithoutCancel(ctx))
	defer stop()
	ch, err := conn.Channel()
	if err != nil {
		return nil, nil, fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return nil, nil, fmt.Errorf("set prefetch: %w", err)
	}
	deliveries, err := ch.Consume(s.cfg.Stream, "", false, false, false, false,
		amqp.Table{producer.HeaderStreamOffset: from})
	if err != nil {
		_ = ch.Close()
		return nil, nil, fmt.Errorf("consume %q at %v: %w", s.cfg.Stream, from, err)
	}
	return ch, deliveries, nil
}

// replayConnection returns the replay connection, dialling it first when there is none
// or it was lost.
func (s *Stream) replayConnection(ctx context.Context) (*amqplink.Conn, error) {
	s.replayMu.Lock()
	defer s.replayMu.Unlock()
	if s.replayConn == nil || s.replayConn.IsClosed() {
		conn, err := s.replayLink.Dial(ctx)
		if err != nil {
			return nil, err
		}
		s.replayConn = conn
	}
	return s.replayConn, nil
}

// closeReplays closes the replay connection, ending every replay, and waits for the
// replay link's watcher.
func (s *Stream) closeReplays() {
	s.replayMu.Lock()
	if s.replayConn != nil {
		_ = s.replayConn.Close()
		s.replayConn = nil
	}
	s.replayMu.Unlock()
	s.replayLink.Wait()
}

// Head estimates the newest offset in the stream: it attaches a consumer at "last", which
// RabbitMQ starts at the first message of the stream's last chunk, and reads that offset
// (so it may be behind the newest by the rest of that chunk). It reports false when the
// stream is empty, the broker is away or ctx ends first.
func (s *Stream) Head(ctx context.Context) (int64, bool) {
	off, _, ok := s.probe(ctx, "last")
	return off, ok
}

// probe attaches a consumer at offset spec from and returns the offset of its first
// delivery and the time it was published (the time header, else the timestamp property;
// zero when it has neither).
func (s *Stream) probe(ctx context.Context, from string) (int64, time.Time, bool) {
	if s.cfgErr != nil {
		return 0, time.Time{}, false
	}
	ch, deliveries, err := s.replayConsume(ctx, 1, from)
	if err != nil {
		return 0, time.Time{}, false
	}
	defer ch.Close()
	select {
	case d, ok := <-deliveries:
		if !ok {
			return 0, time.Time{}, false
		}
		off, ok := streamDeliveryOffset(d)
		return off, deliveryTime(d), ok
	case <-ctx.Done():
		return 0, time.Time{}, false
	}
}

// deliveryTime is when a delivery was published: its time header, else its timestamp
// property; zero when it has neither.
func deliveryTime(d amqp.Delivery) time.Time {
	if v, ok := d.Headers[producer.HeaderTime].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return t
		}
	}
	return d.Timestamp
}

// OldestMessage returns the offset of the oldest message the stream retains and when it
// was published (zero when it says not): how far back a resume can reach. It reports
// false when the stream is empty, the broker is away or ctx ends first.
func (s *Stream) OldestMessage(ctx context.Context) (int64, time.Time, bool) {
	return s.probe(ctx, "first")
}

// Oldest returns the offset of the oldest message the stream retains: the first delivery
// of a consumer attached at "first". It reports false when the stream is empty, the
// broker is away or ctx ends first.
func (s *Stream) Oldest(ctx context.Context) (int64, bool) {
	off, _, ok := s.probe(ctx, "first")
	return off, ok
}
