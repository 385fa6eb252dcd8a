package consumer

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/amqptest"
	"github.com/heraldgw/herald/producer/message"
)

// TestStreamReplay reads the real stream from several offsets: each replay starts just
// after since, keeps offsets contiguous (an undecodable message included, without data)
// and stops when told.
func TestStreamReplay(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	rec := newStreamRecorder()
	s := NewStream(streamTestConfig(t, url, exchange, stream), rec)
	testRun(t, s.Run)
	streamWaitReady(t, s)

	const n = 300
	pub := newStreamPublisher(t, url, exchange)
	for i := 0; i < n; i++ {
		if i == 100 { // a foreign publisher's non-JSON body
			pub.publish(amqp.Publishing{Body: []byte("not json")})
			continue
		}
		m := message.Message{Channel: "c", Data: json.RawMessage(fmt.Sprint(i))}
		m.Prepare(time.Now())
		pub.publish(producer.Encode(m))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := rec.waitFor(ctx, t, n-1) // all but the undecodable one are dispatched live
	first := got[0].Offset          // the stream is new: offsets run from first to first+n-1

	for _, since := range []int64{-1, first - 1, first + 50, first + 99, first + 250, first + n - 2} {
		t.Run(fmt.Sprint("since ", since), func(t *testing.T) {
			want := max(since+1, first)
			var got []message.Message
			err := s.Replay(ctx, since, func(m message.Message) bool {
				if m.Offset != want {
					t.Fatalf("got offset %d, want %d", m.Offset, want)
				}
				got = append(got, m)
				want++
				return m.Offset < first+n-1
			})
			if err != nil {
				t.Fatalf("replay: %v", err)
			}
			if len(got) != int(first+n-max(since+1, first)) {
				t.Fatalf("got %d messages, want %d", len(got), first+n-max(since+1, first))
			}
			for _, m := range got {
				undecodable := m.Offset == first+100
				if undecodable != (m.Data == nil) {
					t.Errorf("offset %d: got data %q, want data only for decodable messages", m.Offset, m.Data)
				}
			}
		})
	}

	// Head is within the last chunk: at most the newest offset, and not before the first.
	if head, ok := s.Head(ctx); !ok || head < first || head > first+n-1 {
		t.Errorf("Head: got %d, %v; want within [%d, %d]", head, ok, first, first+n-1)
	}

	// A replay whose context ends while it waits for messages returns.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if err := s.Replay(short, first+n-1, func(message.Message) bool { return true }); err == nil {
		t.Error("replay past the end: got nil, want the context's error")
	}
}
