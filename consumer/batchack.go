package consumer

import (
	"log/slog"

	amqp "github.com/rabbitmq/amqp091-go"
)

// batchAcker acks a consumer's deliveries with multiple=true, a batch at a time. Acks only
// return credit to the broker, so a batch is acked when it reaches half the prefetch, or
// when the consumer flushes it before it waits for more, and the unacked count never
// reaches the prefetch. It is owned by the goroutine that reads the deliveries.
type batchAcker struct {
	ch      *amqp.Channel
	log     *slog.Logger
	every   int    // the size of a full batch: half the prefetch, at least 1
	pending int    // deliveries handled and not acked yet
	last    uint64 // the delivery tag of the last of them
}

func newBatchAcker(ch *amqp.Channel, prefetch int, log *slog.Logger) batchAcker {
	return batchAcker{ch: ch, log: log, every: max(1, prefetch/2)}
}

// add records the delivery with tag as handled, and acks the batch once it is full.
func (a *batchAcker) add(tag uint64) {
	a.pending++
	a.last = tag
	if a.pending >= a.every {
		a.flush()
	}
}

// flush acks the deliveries handled since the last ack, if any.
func (a *batchAcker) flush() {
	if a.pending == 0 {
		return
	}
	// An error means the channel is closing; the deliveries channel will close next.
	if err := a.ch.Ack(a.last, true); err != nil {
		a.log.Debug("ack failed", "err", err)
	}
	a.pending = 0
}
