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
		{"no time", message.Message{ID: "n1", Data: json.RawMessage(`{}`)}},
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
			got, skipped, err := Decode(delivery(pub))
			if err != nil || len(skipped) > 0 {
				t.Fatalf("Decode: got %v (headers left out: %v), want nil", err, skipped)
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
			name: "the time header wins over the timestamp property",
			d: amqp.Delivery{MessageId: "m", Timestamp: when, Body: []byte(`{}`),
				Headers: amqp.Table{HeaderTime: "2025-03-04T05:06:07.5Z"}},
			want: message.Message{ID: "m", Time: when.Add(500 * time.Millisecond), Data: json.RawMessage(`{}`), Offset: message.NoOffset},
		},
		{
			name: "no time header and no timestamp: no time is made up",
			d:    amqp.Delivery{MessageId: "m", Body: []byte(`{}`), Headers: amqp.Table{HeaderStreamOffset: int64(3)}},
			want: message.Message{ID: "m", Data: json.RawMessage(`{}`), Offset: 3},
		},
		{
			name: "stream offset",
			d:    amqp.Delivery{MessageId: "m", Body: []byte(`1`), Headers: amqp.Table{HeaderStreamOffset: int64(42)}},
			want: message.Message{ID: "m", Data: json.RawMessage(`1`), Offset: 42},
		},
		{
			name: "no message id: the id of its offset",
			d:    amqp.Delivery{Body: []byte(`true`), Headers: amqp.Table{HeaderChannel: "c", HeaderStreamOffset: int64(4711)}},
			want: message.Message{ID: "offset-4711", Channel: "c", Data: json.RawMessage(`true`), Offset: 4711},
		},
		{
			name: "no message id and no offset: no id",
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
			got, skipped, err := Decode(tc.d)
			if err != nil || len(skipped) > 0 {
				t.Fatalf("Decode: got %v (headers left out: %v), want nil", err, skipped)
			}
			if d := diffMessage(got, tc.want); d != "" {
				t.Error(d)
			}
		})
	}
}

// TestDecodeLeavesOutOptionalHeaders checks that an optional header that cannot be read
// costs the message that field only: it is delivered, the rest intact, and Decode names
// the header it left out.
func TestDecodeLeavesOutOptionalHeaders(t *testing.T) {
	when := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	long := strings.Repeat("y", 10000)
	tests := []struct {
		name    string
		headers amqp.Table
		skipped string    // the header left out
		time    time.Time // the time the message keeps
		offset  int64
	}{
		{"time not RFC 3339", amqp.Table{HeaderTime: "yesterday"}, HeaderTime, when, 7},
		{"time not RFC 3339, long", amqp.Table{HeaderTime: long}, HeaderTime, when, 7},
		{"time not a string", amqp.Table{HeaderTime: int64(1700000000)}, HeaderTime, when, 7},
		{"from not a string", amqp.Table{HeaderFrom: true}, HeaderFrom, when, 7},
		{"from an AMQP array", amqp.Table{HeaderFrom: []interface{}{"carol"}}, HeaderFrom, when, 7},
		{"source not a string", amqp.Table{HeaderSource: amqp.Table{"x": "y"}}, HeaderSource, when, 7},
		{"offset negative", amqp.Table{HeaderStreamOffset: int64(-1)}, HeaderStreamOffset, when, message.NoOffset},
		{"offset not int64", amqp.Table{HeaderStreamOffset: int32(5)}, HeaderStreamOffset, when, message.NoOffset},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := amqp.Table{HeaderChannel: "news", HeaderUsers: `["alice"]`, HeaderStreamOffset: int64(7)}
			for k, v := range tc.headers {
				h[k] = v
			}
			d := amqp.Delivery{MessageId: "id-1", Timestamp: when, Body: []byte(`{"ok":true}`), Headers: h}
			got, skipped, err := Decode(d)
			if err != nil {
				t.Fatalf("Decode: got %v, want the message without header %s", err, tc.skipped)
			}
			want := message.Message{ID: "id-1", Channel: "news", Users: []string{"alice"}, Time: tc.time,
				Data: json.RawMessage(`{"ok":true}`), Offset: tc.offset}
			if d := diffMessage(got, want); d != "" {
				t.Error(d)
			}
			if len(skipped) != 1 || skipped[0].Header != tc.skipped {
				t.Fatalf("headers left out: got %v, want one: %s", skipped, tc.skipped)
			}
			if msg := skipped[0].Error(); !strings.HasPrefix(msg, "header "+tc.skipped+": ") || len(msg) > 200 {
				t.Errorf("error: got %q (%d bytes), want it to name the header, within 200 bytes", msg, len(msg))
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	body := []byte(`{"ok":true}`)
	long := strings.Repeat("x", 10000)
	tests := []struct {
		name    string
		d       amqp.Delivery
		wantIs  []error // errors.Is(err, each) must hold
		header  string  // the routing header named, where one is at fault
		wantMsg string  // the error must contain this
	}{
		{"body not JSON", amqp.Delivery{Body: []byte(`{nope`)}, []error{ErrNotJSON}, "", "body is not JSON"},
		{"empty body", amqp.Delivery{}, []error{ErrNotJSON}, "", "body is not JSON"},
		{"channel not a string", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderChannel: int32(7)}}, []error{ErrUnroutable}, HeaderChannel, "header channel: got int32, want string"},
		{"invalid channel name", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderChannel: "no spaces"}}, []error{ErrUnroutable, message.ErrBadChannel}, HeaderChannel, "no spaces"},
		{"empty channel name", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderChannel: ""}}, []error{ErrUnroutable, message.ErrBadChannel}, HeaderChannel, "header channel"},
		{"users string not JSON", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: "alice"}}, []error{ErrUnroutable}, HeaderUsers, "is not a JSON array of strings"},
		{"users string long", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: long}}, []error{ErrUnroutable}, HeaderUsers, "is not a JSON array of strings"},
		{"users JSON not an array", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: `{"alice":1}`}}, []error{ErrUnroutable}, HeaderUsers, "is not a JSON array of strings"},
		{"users of another type", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: int32(1)}}, []error{ErrUnroutable}, HeaderUsers, "header users: got int32"},
		{"users JSON with a non-string", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: `["alice",3]`}}, []error{ErrUnroutable}, HeaderUsers, "is not a non-empty string"},
		{"users array with a non-string", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: []interface{}{"alice", int64(3)}}}, []error{ErrUnroutable}, HeaderUsers, "is not a non-empty string"},
		{"users with an empty string", amqp.Delivery{Body: body, Headers: amqp.Table{HeaderUsers: []interface{}{""}}}, []error{ErrUnroutable}, HeaderUsers, "is not a non-empty string"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.d.MessageId = "id-1"
			_, _, err := Decode(tc.d)
			if err == nil {
				t.Fatalf("Decode: got nil error, want one containing %q", tc.wantMsg)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), `"id-1"`) {
				t.Errorf("Decode: got %q, want it to contain %q and the message id", err, tc.wantMsg)
			}
			if len(err.Error()) > 300 {
				t.Errorf("Decode: got an error of %d bytes, want a bounded one", len(err.Error()))
			}
			for _, is := range tc.wantIs {
				if !errors.Is(err, is) {
					t.Errorf("Decode: got %v, want errors.Is %v", err, is)
				}
			}
			var he *HeaderError
			if got := errors.As(err, &he); got != (tc.header != "") || got && he.Header != tc.header {
				t.Errorf("Decode: got %v, want a *HeaderError for %q", err, tc.header)
			}
		})
	}
}
