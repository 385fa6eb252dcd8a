package producer

import (
	"encoding/json"
	"fmt"
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
)

// ContentType is the content type of every message body Herald publishes.
const ContentType = "application/json"

// Encode turns a prepared message into the AMQP publishing that carries it: the body is
// the data, the id and time are properties, the routing is in headers.
func Encode(m message.Message) amqp.Publishing {
	h := amqp.Table{HeaderTime: m.Time.UTC().Format(time.RFC3339Nano)}
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

// Decode reads a Herald message from an AMQP delivery, as published by Encode or by any
// AMQP client that follows PROTOCOL.md section 3. A body that is not JSON, or a header of
// the wrong type or value, is an error: the message cannot be delivered as the protocol
// says. A missing message id is left empty; a missing time is left zero. Offset is the
// stream offset where the delivery carries one, else message.NoOffset.
func Decode(d amqp.Delivery) (message.Message, error) {
	m := message.Message{ID: d.MessageId, Data: d.Body, Offset: message.NoOffset}
	if !json.Valid(d.Body) {
		return m, fmt.Errorf("decode message %q: body is not JSON", d.MessageId)
	}
	for k, v := range d.Headers {
		var err error
		switch k {
		case HeaderChannel:
			m.Channel, err = headerString(k, v)
			if err == nil && !message.ValidChannel(m.Channel) {
				err = fmt.Errorf("header %s: %w: %q", k, message.ErrBadChannel, m.Channel)
			}
		case HeaderFrom:
			m.From, err = headerString(k, v)
		case HeaderSource:
			m.Source, err = headerString(k, v)
		case HeaderUsers:
			m.Users, err = headerStrings(k, v)
		case HeaderTime:
			var s string
			if s, err = headerString(k, v); err == nil {
				if m.Time, err = time.Parse(time.RFC3339Nano, s); err != nil {
					err = fmt.Errorf("header %s: %w", k, err)
				}
			}
		case HeaderStreamOffset:
			if off, ok := v.(int64); ok && off >= 0 {
				m.Offset = off
			} else {
				err = fmt.Errorf("header %s: got %T %v, want a non-negative int64", k, v, v)
			}
		}
		if err != nil {
			return m, fmt.Errorf("decode message %q: %w", d.MessageId, err)
		}
	}
	if m.Time.IsZero() {
		m.Time = d.Timestamp
	}
	return m, nil
}

func headerString(k string, v interface{}) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("header %s: got %T, want string", k, v)
	}
	return s, nil
}

func headerStrings(k string, v interface{}) ([]string, error) {
	var arr []interface{}
	switch v := v.(type) {
	case []interface{}:
		arr = v
	case string:
		if err := json.Unmarshal([]byte(v), &arr); err != nil {
			return nil, fmt.Errorf("header %s: %q is not a JSON array of strings", k, v)
		}
	default:
		return nil, fmt.Errorf("header %s: got %T, want a JSON array of strings in a string", k, v)
	}
	out := make([]string, 0, len(arr))
	for _, e := range arr {
		s, ok := e.(string)
		if !ok || s == "" {
			return nil, fmt.Errorf("header %s: element %v (%T) is not a non-empty string", k, e, e)
		}
		out = append(out, s)
	}
	return out, nil
}
