// Package amqptest helps tests that talk to a real RabbitMQ: where to find it, what to do
// when it is not there, and exchange and stream names that are unique to one test and
// deleted after it.
//
// The broker is at $HERALD_TEST_AMQP_URL, or amqp://guest:guest@127.0.0.1:5672/ when that
// is unset. When it cannot be reached the test fails if $CI is "true" (CI must run these
// tests) and is skipped otherwise.
package amqptest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the broker tests use when HERALD_TEST_AMQP_URL is unset.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// URL returns the broker URL for tests after checking that the broker answers; it fails
// the test under CI and skips it elsewhere when it does not.
func URL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("HERALD_TEST_AMQP_URL")
	if url == "" {
		url = DefaultURL
	}
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("RabbitMQ at %s is unreachable and CI=true: %v", url, err)
		}
		t.Skipf("RabbitMQ at %s is unreachable (set CI=true to fail instead): %v", url, err)
	}
	_ = conn.Close()
	return url
}

// Names returns an exchange and a stream name unique to this test run, and deletes both
// (if they were declared) when the test ends.
func Names(t testing.TB, url string) (exchange, stream string) {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	base := "herald-test." + sanitize(t.Name()) + "." + hex.EncodeToString(b[:])
	exchange, stream = base+".x", base+".stream"
	t.Cleanup(func() { Delete(t, url, exchange, stream) })
	return exchange, stream
}

// Delete removes an exchange and a queue if they exist, logging (not failing) on error.
func Delete(t testing.TB, url, exchange, queue string) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Logf("amqptest: cleanup: dial: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Logf("amqptest: cleanup: channel: %v", err)
		return
	}
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		t.Logf("amqptest: cleanup: delete queue %s: %v", queue, err)
		if ch, err = conn.Channel(); err != nil {
			return
		}
	}
	if err := ch.ExchangeDelete(exchange, false, false); err != nil {
		t.Logf("amqptest: cleanup: delete exchange %s: %v", exchange, err)
	}
}

func sanitize(name string) string {
	name = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, name)
	if len(name) > 60 {
		name = name[:60]
	}
	return name
}

// Channel opens a connection and a channel of its own, closed when the test ends.
func Channel(t testing.TB, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("amqptest: dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("amqptest: channel: %v", err)
	}
	return ch
}

// BindQueue declares exchange as Herald does (durable fanout), binds a new exclusive
// classic queue with args to it, and consumes it with automatic acks, on a connection of
// its own that is closed when the test ends: what a test publisher's messages reach.
func BindQueue(t testing.TB, url, exchange string, args amqp.Table) <-chan amqp.Delivery {
	t.Helper()
	ch := Channel(t, url)
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		t.Fatalf("amqptest: declare exchange: %v", err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, args)
	if err != nil {
		t.Fatalf("amqptest: declare queue: %v", err)
	}
	if err := ch.QueueBind(q.Name, "", exchange, false, nil); err != nil {
		t.Fatalf("amqptest: bind queue: %v", err)
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatalf("amqptest: consume: %v", err)
	}
	return deliveries
}

// StreamKeepsHeaders publishes a message with an array-valued and a table-valued header
// to a stream of its own (deleted when the test ends) and reads it back: whether the
// broker keeps each kind through a stream, found without Herald's code, and the broker's
// version. RabbitMQ 3.10 drops both.
func StreamKeepsHeaders(t testing.TB, url string) (arrays, tables bool, version string) {
	t.Helper()
	_, stream := Names(t, url)
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("amqptest: dial: %v", err)
	}
	defer conn.Close()
	version, _ = conn.Properties["version"].(string)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("amqptest: channel: %v", err)
	}
	if _, err := ch.QueueDeclare(stream, true, false, false, false, amqp.Table{"x-queue-type": "stream"}); err != nil {
		t.Fatalf("amqptest: declare stream: %v", err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("amqptest: confirm: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", stream, true, false, amqp.Publishing{
		Body:    []byte(`{}`),
		Headers: amqp.Table{"a": []interface{}{"x"}, "t": amqp.Table{"k": "v"}, "s": "x"},
	})
	if err != nil {
		t.Fatalf("amqptest: publish: %v", err)
	}
	if ok, err := dc.WaitContext(ctx); !ok || err != nil {
		t.Fatalf("amqptest: confirm: %v %v", ok, err)
	}
	if err := ch.Qos(1, 0, false); err != nil {
		t.Fatalf("amqptest: qos: %v", err)
	}
	ds, err := ch.Consume(stream, "", false, false, false, false, amqp.Table{"x-stream-offset": "first"})
	if err != nil {
		t.Fatalf("amqptest: consume: %v", err)
	}
	select {
	case d := <-ds:
		if _, ok := d.Headers["s"]; !ok {
			t.Fatalf("amqptest: the message came back without its string header: %v", d.Headers)
		}
		_, arrays = d.Headers["a"].([]interface{})
		_, tables = d.Headers["t"].(amqp.Table)
	case <-ctx.Done():
		t.Fatal("amqptest: the message did not come back from the stream")
	}
	return arrays, tables, version
}

// QueueExists reports whether the broker has a queue (or stream) named name.
func QueueExists(t testing.TB, url, name string) bool {
	t.Helper()
	ch := Channel(t, url)
	_, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	var aerr *amqp.Error
	if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
		return false
	}
	if err != nil {
		t.Fatalf("amqptest: passive declare %s: %v", name, err)
	}
	return true
}
