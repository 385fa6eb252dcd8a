package producer

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/message"
)

// delivery is what a consumer would receive for p.
func delivery(p amqp.Publishing) amqp.Delivery {
	return amqp.Delivery{
		Headers:      p.Headers,
		ContentType:  p.ContentType,
		DeliveryMode: p.DeliveryMode,
		MessageId:    p.MessageId,
		Timestamp:    p.Timestamp,
		Body:         p.Body,
	}
}

// diffMessage describes how got differs from want, or returns "".
func diffMessage(got, want message.Message) string {
	var d []string
	if got.ID != want.ID {
		d = append(d, "ID: got "+got.ID+", want "+want.ID)
	}
	if got.Channel != want.Channel {
		d = append(d, "Channel: got "+got.Channel+", want "+want.Channel)
	}
	if !slices.Equal(got.Users, want.Users) {
		d = append(d, "Users: got ["+strings.Join(got.Users, " ")+"], want ["+strings.Join(want.Users, " ")+"]")
	}
	if got.From != want.From {
		d = append(d, "From: got "+got.From+", want "+want.From)
	}
	if !got.Time.Equal(want.Time) {
		d = append(d, "Time: got "+got.Time.String()+", want "+want.Time.String())
	}
	if string(got.Data) != string(want.Data) {
		d = append(d, "Data: got "+string(got.Data)+", want "+string(want.Data))
	}
	if got.Offset != want.Offset {
		d = append(d, "Offset differs")
	}
	return strings.Join(d, "; ")
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	when := time.Date(2025, 3, 4, 5, 6, 7, 891011121, time.UTC)
	tests := []struct {
		name string
		m    message.Message
	}{
		{"broadcast", message.Message{ID: "b1", Time: when, Data: json.RawMessage(`{"a":1}`)}},
		{"channel", message.Message{ID: "c1", Channel: "news:eu/sport.x_y-z", Time: when, Data: json.RawMessage(`"text"`)}},
		{"users and from", message.Message{ID: "u1", Users: []string{"alice", "bob"}, From: "carol", Time: when, Data: json.RawMessage(`[1,2,3]`)}},
		{"non-UTC time", message.Message{ID: "t1", Time: when.In(time.FixedZone("X", 3600)), Data: json.RawMessage(`null`)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pub := Encode(tc.m)
			if pub.ContentType != ContentType {
				t.Errorf("ContentType: got %q, want %q", pub.ContentType, ContentType)
			}
			if pub.DeliveryMode != amqp.Persistent {
				t.Errorf("DeliveryMode: got %d, want %d", pub.DeliveryMode, amqp.Persistent)
			}
			if err := pub.Headers.Validate(); err != nil {
				t.Errorf("headers: got %v, want a valid AMQP table", err)
			}
			got, err := Decode(delivery(pub))
			if err != nil {
				t.Fatalf("Decode: got %v, want nil", err)
			}
			want := tc.m
			want.Offset = message.NoOffset
			if d := diffMessage(got, want); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	when := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	tests := []struct {
		name string
		d    amqp.Delivery
		want message.Message
	}{
		{
			name: "no headers: time from the timestamp property",
			d:    amqp.Delivery{MessageId: "m", Timestamp: when, Body: []byte(`{}`)},
			want: message.Message{ID: "m", Time: when, Data: json.RawMessage(`{}`), Offset: message.NoOffset},
		},
		{
			name: "stream offset",
			d:    amqp.Delivery{MessageId: "m", Body: []byte(`1`), Headers: amqp.Table{HeaderStreamOffset: int64(42)}},
			want: message.Message{ID: "m", Data: json.RawMessage(`1`), Offset: 42},
		},
		{
			name: "no message id",
			d:    amqp.Delivery{Body: []byte(`true`), Headers: amqp.Table{HeaderChannel: "c"}},
			want: message.Message{Channel: "c", Data: json.RawMessage(`true`), Offset: message.NoOffset},
		},
		{
			name: "users as an AMQP array",
			d:    amqp.Delivery{MessageId: "m", Body: []byte(`{}`), Headers: amqp.Table{HeaderUsers: []interface{}{"alice", "bob"}}},
			want: message.Message{ID: "m", Users: []string{"alice", "bob"}, Data: json.RawMessage(`{}`), Offset: message.NoOffset},
		},
		{
			name: "users as a JSON string",
			d:    amqp.Delivery{MessageId: "m", Body: []byte(`{}`), Headers: amqp.Table{HeaderUsers: `["alice","bob"]`}},
			want: message.Message{ID: "m", Users: []string{"alice", "bob"}, Data: json.RawMessage(`{}`), Offset: message.NoOffset},
		},
		{
			name: "unknown headers are ignored",
			d:    amqp.Delivery{MessageId: "m", Body: []byte(`{}`), Headers: amqp.Table{"x-other": int32(1)}},
			want: message.Message{ID: "m", Data: json.RawMessage(`{}`), Offset: message.NoOffset},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode(tc.d)
			if err != nil {
				t.Fatalf("Decode: got %v, want nil", err)
			}
			if d := diffMessage(got, tc.want); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	body := []byte(`{"ok":true}`)
	tests := []struct {
		name    string
		d       amqp.Delivery
		wantIs  error  // when not nil, errors.Is(err, wantIs) must hold
		wantMsg string // the error must contain this
	}{
		{"body not JSON", amqp.Delivery{Body: []byte(`{nope`)}, nil, "body is not JSON"},
		{"empty body", amqp.Delivery{}, nil, "body is not JSON"},
		{"channel not a string", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderChannel: int32(7)}}, nil, "header channel: got int32, want string"},
		{"invalid channel name", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderChannel: "no spaces"}}, message.ErrBadChannel, "no spaces"},
		{"empty channel name", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderChannel: ""}}, message.ErrBadChannel, "header channel"},
		{"from not a string", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderFrom: true}}, nil, "header from"},
		{"users string not JSON", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: "alice"}}, nil, "is not a JSON array of strings"},
		{"users JSON not an array", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: `{"alice":1}`}}, nil, "is not a JSON array of strings"},
		{"users of another type", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: int32(1)}}, nil, "header users: got int32"},
		{"users JSON with a non-string", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: `["alice",3]`}}, nil, "is not a non-empty string"},
		{"users array with a non-string", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: []interface{}{"alice", int64(3)}}}, nil, "is not a non-empty string"},
		{"users with an empty string", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: []interface{}{""}}}, nil, "is not a non-empty string"},
		{"time not RFC 3339", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderTime: "yesterday"}}, nil, "header time"},
		{"time not a string", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderTime: int64(1700000000)}}, nil, "header time: got int64"},
		{"offset negative", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderStreamOffset: int64(-1)}}, nil, "want a non-negative int64"},
		{"offset not int64", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderStreamOffset: int32(5)}}, nil, "want a non-negative int64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.d.MessageId = "id-1"
			_, err := Decode(tc.d)
			if err == nil {
				t.Fatalf("Decode: got nil error, want one containing %q", tc.wantMsg)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), `"id-1"`) {
				t.Errorf("Decode: got %q, want it to contain %q and the message id", err, tc.wantMsg)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("Decode: got %v, want errors.Is %v", err, tc.wantIs)
			}
		})
	}
}
