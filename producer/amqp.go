package producer

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/message"
)

// Names of the AMQP headers that carry a message's routing (PROTOCOL.md section 3).
const (
	HeaderChannel = "channel" // string: the channel; absent for a broadcast to all
	// HeaderUsers restricts delivery to these users: a string holding a JSON array of
	// strings, e.g. ["alice","bob"]. RabbitMQ streams drop array-valued headers, so Encode
	// sends this form; Decode also takes an AMQP array where a broker keeps one.
	HeaderUsers = "users"
	HeaderFrom  = "from" // string: the publishing user; absent for backend publishes
	// HeaderTime is an extension: the publish time in RFC 3339 with nanoseconds, since the
	// AMQP timestamp property has whole seconds only. Readers fall back to the property.
	HeaderTime = "time"
	// HeaderSource is an extension: where the message entered Herald ("ws", "http"), set
	// by gateways for metrics; absent for other publishers.
	HeaderSource = "source"
	// HeaderStreamOffset is set by RabbitMQ on every delivery from a stream queue.
	HeaderStreamOffset = "x-stream-offset"
	// HeaderControl marks a control message of the gateways, not a Herald message: every
	// reader skips a delivery that has it, whatever its value, which names the kind
	// ("canary": a gateway's probe of its own message path). PROTOCOL.md section 15.
	HeaderControl = "x-herald-control"
)

// ContentType is the content type of every message body Herald publishes.
const ContentType = "application/json"

// Encode turns a prepared message into the AMQP publishing that carries it: the body is
// the data, the id and time are properties, the routing is in headers. A zero Time is
// left out (the time header and the timestamp property both).
func Encode(m message.Message) amqp.Publishing {
	h := amqp.Table{}
	if !m.Time.IsZero() {
		h[HeaderTime] = m.Time.UTC().Format(time.RFC3339Nano)
	}
	if m.Channel != "" {
		h[HeaderChannel] = m.Channel
	}
	if len(m.Users) > 0 {
		users, _ := json.Marshal(m.Users) // a []string always marshals
		h[HeaderUsers] = string(users)
	}
	if m.From != "" {
		h[HeaderFrom] = m.From
	}
	if m.Source != "" {
		h[HeaderSource] = m.Source
	}
	return amqp.Publishing{
		Headers:      h,
		ContentType:  ContentType,
		DeliveryMode: amqp.Persistent,
		MessageId:    m.ID,
		Timestamp:    m.Time,
		Body:         m.Data,
	}
}

// Errors of Decode that mean a delivery cannot be delivered at all; callers match them
// with errors.Is.
var (
	// ErrNotJSON: the body is not JSON (an empty body included).
	ErrNotJSON = errors.New("body is not JSON")
	// ErrUnroutable: the channel or users header is there but cannot be read. Leaving it
	// out would widen the message's audience (a private message would reach the whole
	// channel, a channel's message every connection), so the message goes to nobody.
	ErrUnroutable = errors.New("routing header cannot be read")
)

// HeaderError is a header of a delivery that Decode could not read: its name (one of the
// Header constants) and why, with at most a bounded prefix of its value.
type HeaderError struct {
	Header string
	Err    error
}

func (e *HeaderError) Error() string { return "header " + e.Header + ": " + e.Err.Error() }

func (e *HeaderError) Unwrap() error { return e.Err }

// maxQuoted bounds how much of a value from a delivery an error quotes: errors end up in
// logs, and a publisher chooses the values.
const maxQuoted = 64

// Decode reads a Herald message from an AMQP delivery, as published by Encode or by any
// AMQP client that follows PROTOCOL.md section 3.
//
// It returns an error only when the message cannot be delivered as the protocol says: the
// body is not JSON (ErrNotJSON), or a routing header, channel or users, is there but
// cannot be read (ErrUnroutable, wrapping the *HeaderError). An optional header that
// cannot be read (from, time, source, x-stream-offset) is left out of m and reported in
// skipped, one *HeaderError each, and the message is delivered without it.
//
// Offset is the stream offset where the delivery carries one, else message.NoOffset. A
// delivery without a message id gets message.OffsetID of its offset, the same on every
// reader; without an offset either, the id stays empty. Time is the time header, else the
// timestamp property, else zero: where the publisher gave no time, none is made up.
func Decode(d amqp.Delivery) (m message.Message, skipped []*HeaderError, err error) {
	m = message.Message{ID: d.MessageId, Data: d.Body, Offset: message.NoOffset}
	if !json.Valid(d.Body) {
		return m, nil, fmt.Errorf("decode message %s: %w", quote(d.MessageId), ErrNotJSON)
	}
	var routing *HeaderError // the first routing header that cannot be read
	for k, v := range d.Headers {
		var herr error
		switch k {
		case HeaderChannel:
			var ch string
			if ch, herr = headerString(v); herr == nil {
				if message.ValidChannel(ch) {
					m.Channel = ch
				} else {
					herr = fmt.Errorf("%w: %s", message.ErrBadChannel, quote(ch))
				}
			}
		case HeaderUsers:
			m.Users, herr = headerStrings(v)
		case HeaderFrom:
			m.From, herr = headerString(v)
		case HeaderSource:
			m.Source, herr = headerString(v)
		case HeaderTime:
			var s string
			if s, herr = headerString(v); herr == nil {
				if m.Time, herr = time.Parse(time.RFC3339Nano, s); herr != nil {
					herr = fmt.Errorf("%s is not an RFC 3339 time", quote(s))
				}
			}
		case HeaderStreamOffset:
			if off, ok := v.(int64); ok && off >= 0 {
				m.Offset = off
			} else {
				herr = fmt.Errorf("got %T, want a non-negative int64", v)
			}
		}
		if herr == nil {
			continue
		}
		he := &HeaderError{Header: k, Err: herr}
		switch k {
		case HeaderChannel, HeaderUsers:
			if routing == nil || k < routing.Header { // the same one whatever the map's order
				routing = he
			}
		default:
			skipped = append(skipped, he)
		}
	}
	if m.Time.IsZero() && !d.Timestamp.IsZero() {
		m.Time = d.Timestamp
	}
	if m.ID == "" && m.Offset >= 0 {
		m.ID = message.OffsetID(m.Offset)
	}
	if routing != nil {
		return m, skipped, fmt.Errorf("decode message %s: %w: %w", quote(m.ID), ErrUnroutable, routing)
	}
	return m, skipped, nil
}

// quote quotes s for an error, cut to maxQuoted bytes.
func quote(s string) string {
	if len(s) > maxQuoted {
		return strconv.Quote(s[:maxQuoted]) + "..."
	}
	return strconv.Quote(s)
}

func headerString(v interface{}) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("got %T, want string", v)
	}
	return s, nil
}

func headerStrings(v interface{}) ([]string, error) {
	var arr []interface{}
	switch v := v.(type) {
	case []interface{}:
		arr = v
	case string:
		if err := json.Unmarshal([]byte(v), &arr); err != nil {
			return nil, fmt.Errorf("%s is not a JSON array of strings", quote(v))
		}
	default:
		return nil, fmt.Errorf("got %T, want a JSON array of strings in a string", v)
	}
	out := make([]string, 0, len(arr))
	for _, e := range arr {
		s, ok := e.(string)
		if !ok || s == "" {
			return nil, fmt.Errorf("element %T %s is not a non-empty string", e, quote(fmt.Sprint(e)))
		}
		out = append(out, s)
	}
	return out, nil
}
