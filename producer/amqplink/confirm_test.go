package amqplink

import (
	"errors"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/amqptest"
)

// openConfirmer opens a session on url with a Confirmer, closed when the test ends.
func openConfirmer(t *testing.T, url string) (*Session, *Confirmer) {
	t.Helper()
	l, err := NewLink(Config{URLs: []string{url}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var c *Confirmer
	s, err := l.Open(t.Context(), func(s *Session) (err error) {
		c, err = NewConfirmer(s, testLogger(t))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		<-c.Done()
		l.Wait()
	})
	return s, c
}

func TestConfirmerVerdicts(t *testing.T) {
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	deliveries := amqptest.BindQueue(t, url, exchange, nil)
	_, c := openConfirmer(t, url)
	ctx := t.Context()
	if err := c.Publish(ctx, exchange, "", true, amqp.Publishing{MessageId: "a", Body: []byte(`1`)}); err != nil {
		t.Fatalf("Publish to a bound exchange: got %v, want nil", err)
	}
	select {
	case d := <-deliveries:
		if d.MessageId != "a" {
			t.Errorf("delivery: got %q, want a", d.MessageId)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery")
	}
	other, _ := amqptest.Names(t, url)
	ch := amqptest.Channel(t, url)
	if err := ch.ExchangeDeclare(other, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, other, "", true, amqp.Publishing{MessageId: "b", Body: []byte(`1`)}); !errors.Is(err, ErrReturned) {
		t.Errorf("mandatory Publish with nothing bound: got %v, want ErrReturned", err)
	}
	if err := c.Publish(ctx, other, "", false, amqp.Publishing{MessageId: "c", Body: []byte(`1`)}); err != nil {
		t.Errorf("Publish with nothing bound, not mandatory: got %v, want nil", err)
	}
}

// TestConfirmerFailsPendingOnLoss: a publish waiting for its confirm when the connection
// is lost fails with ErrUnavailable, never passes for confirmed.
func TestConfirmerFailsPendingOnLoss(t *testing.T) {
	url := amqptest.URL(t)
	s, c := openConfirmer(t, url)
	// A publish whose confirm will never come: its tag is far beyond any real one.
	pp := &pendingPublish{id: "never-confirmed", result: make(chan error, 1)}
	if !c.register(1<<40, pp) {
		t.Fatal("register: got false, want true")
	}
	_ = s.Connection.Close()
	select {
	case err := <-pp.result:
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("pending publish: got %v, want an error wrapping ErrUnavailable", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending publish: still waiting 5s after the connection closed")
	}
	<-c.Done()
	if err := c.Publish(t.Context(), "x", "", false, amqp.Publishing{Body: []byte(`1`)}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Publish on a dead Confirmer: got %v, want ErrUnavailable", err)
	}
}
