package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"log/slog"
	"time"

	"github.com/heraldgw/herald/producer"
)

func ExamplePublisher_Publish() {
	ctx := context.Background()
	p, err := producer.New(ctx, producer.Config{
		URL:    "amqp://guest:guest@127.0.0.1:5672/",
		Logger: slog.Default(),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	id, err := p.Publish(ctx, producer.Message{
		Channel: "orders:eu",
		Data:    json.RawMessage(`{"order":17,"status":"shipped"}`),
	})
	switch {
	case errors.Is(err, producer.ErrUnavailable):
		// Not connected, or the connection was lost before the confirm: retry later
		// with the same id; gateways deliver a repeated id once.
		log.Printf("publish %s: broker unavailable, retry later: %v", id, err)
	case err != nil:
		log.Printf("publish %s: %v", id, err)
	default:
		log.Printf("published %s", id)
	}
}
