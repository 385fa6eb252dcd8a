package producer

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/message"
)

// FuzzDecode feeds Decode deliveries from foreign publishers: any body, and headers of
// any of the types an AMQP table may carry (chosen by kinds, two bits per header). Decode
// never panics; what it accepts is deliverable as PROTOCOL.md says (a JSON body, a valid
// channel, non-empty users) and goes through Encode and Decode again unchanged. The seed
// corpus is in testdata/fuzz/FuzzDecode; go test runs it as a normal test.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"a":1}`), "news", `["alice","bob"]`, "carol", "2025-03-04T05:06:07.891011121Z", int64(42), "id-1", uint16(0))
	f.Add([]byte(`not json`), "news", ``, ``, ``, int64(0), "", uint16(0))
	f.Add([]byte(``), "", ``, ``, ``, int64(-1), "", uint16(0xffff))
	f.Add([]byte(`"x"`), "bad channel", `[1]`, "", "yesterday", int64(-5), "id", uint16(0x5555))
	f.Add([]byte(`[1,2]`), "a:b", `["",""]`, "x", "2025-01-01T00:00:00Z", int64(7), "id", uint16(0xaaaa))
	f.Add([]byte(`null`), "x", `"alice"`, "", "", int64(1), "", uint16(0x0101))
	f.Fuzz(func(t *testing.T, body []byte, channel, users, from, when string, offset int64, id string, kinds uint16) {
		h := amqp.Table{}
		// Each header is absent, a string, another type, or a nested table/array.
		put := func(i int, name string, str any, other any) {
			switch (kinds >> (2 * i)) & 3 {
			case 1:
				h[name] = str
			case 2:
				h[name] = other
			case 3:
				h[name] = []interface{}{str, other}
			}
		}
		put(0, HeaderChannel, channel, int32(len(channel)))
		var arr []interface{}
		_ = json.Unmarshal([]byte(users), &arr)
		put(1, HeaderUsers, users, arr)
		put(2, HeaderFrom, from, []byte(from))
		put(3, HeaderTime, when, time.Unix(offset, 0))
		put(4, HeaderSource, from, amqp.Table{"x": from})
		put(5, HeaderStreamOffset, offset, when)
		if kinds&(1<<12) != 0 {
			h[HeaderStreamOffset] = int32(offset)
		}
		d := amqp.Delivery{Headers: h, Body: body, MessageId: id, Timestamp: time.Unix(offset%1e10, 0)}
		m, skipped, err := Decode(d)
		if err != nil {
			if !errors.Is(err, ErrNotJSON) && !errors.Is(err, ErrUnroutable) {
				t.Fatalf("Decode: got %v, want ErrNotJSON or ErrUnroutable", err)
			}
			return // counted and dropped by the consumer
		}
		for _, he := range skipped {
			if he.Header == HeaderChannel || he.Header == HeaderUsers {
				t.Fatalf("a routing header was left out, and the message kept: %v", he)
			}
		}
		if m.ID == "" && m.Offset >= 0 {
			t.Fatalf("no id at offset %d (message_id %q)", m.Offset, id)
		}
		if !json.Valid(m.Data) {
			t.Fatalf("accepted a body that is not JSON: %q", body)
		}
		if m.Channel != "" && !message.ValidChannel(m.Channel) {
			t.Fatalf("accepted channel %q", m.Channel)
		}
		for _, u := range m.Users {
			if u == "" {
				t.Fatalf("accepted an empty user in %q", users)
			}
		}
		if m.Offset < message.NoOffset {
			t.Fatalf("offset %d", m.Offset)
		}
		again, skipped, err := Decode(delivery(Encode(m)))
		if err != nil || len(skipped) > 0 {
			t.Fatalf("Decode(Encode(m)) of an accepted message: %v (left out: %v)", err, skipped)
		}
		if again.Channel != m.Channel || again.From != m.From || !slices.Equal(again.Users, m.Users) ||
			string(again.Data) != string(m.Data) || again.ID != m.ID || !again.Time.Equal(m.Time) && !m.Time.IsZero() {
			t.Fatalf("round trip changed the message: %+v, then %+v", m, again)
		}
	})
}
