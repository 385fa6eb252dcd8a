package consumer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/producer/amqptest"
)

// TestProbeHeaders: the probe's answer is what the broker does to array and table
// headers in a stream, as the test finds it directly (RabbitMQ 3.10 drops both; a
// version that keeps them must be reported as keeping them), and its stream is gone.
func TestProbeHeaders(t *testing.T) {
	url := amqptest.URL(t)
	arrays, tables, version := amqptest.StreamKeepsHeaders(t, url)
	t.Logf("RabbitMQ %s keeps arrays: %v, tables: %v", version, arrays, tables)
	if strings.HasPrefix(version, "3.10.") && (arrays || tables) {
		t.Errorf("RabbitMQ %s kept arrays %v, tables %v: 3.10 is known to drop both", version, arrays, tables)
	}

	exchange, stream := amqptest.Names(t, url)
	s := NewStream(streamTestConfig(t, url, exchange, stream), newStreamRecorder())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs, err := s.ProbeHeaders(ctx)
	if err != nil {
		t.Fatalf("ProbeHeaders: %v", err)
	}
	if hs.Arrays != arrays || hs.Tables != tables {
		t.Errorf("ProbeHeaders: got arrays %v, tables %v; the broker keeps arrays %v, tables %v", hs.Arrays, hs.Tables, arrays, tables)
	}
	if !strings.HasPrefix(hs.Stream, stream+".probe.") {
		t.Errorf("probe stream %q: want a name of its own, after %q", hs.Stream, stream)
	}
	if amqptest.QueueExists(t, url, hs.Stream) {
		t.Errorf("probe stream %q still exists after the probe", hs.Stream)
		_, _ = amqptest.Channel(t, url).QueueDelete(hs.Stream, false, false, false)
	}
	if amqptest.QueueExists(t, url, stream) {
		t.Errorf("stream %q exists: the probe must not declare Herald's stream", stream)
	}
}

// TestProbeHeadersCutShort: a probe whose context ends while it waits, after its stream
// was declared, returns the context's error at once and deletes its stream all the same.
func TestProbeHeadersCutShort(t *testing.T) {
	url := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, url)
	s := NewStream(streamTestConfig(t, url, exchange, stream), newStreamRecorder())
	declared := make(chan string, 1)
	s.probeHook = func(ctx context.Context, name string) {
		declared <- name
		<-ctx.Done() // as a broker that never answers: the probe's time runs out
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	var hs HeaderSupport
	go func() {
		var err error
		hs, err = s.ProbeHeaders(ctx)
		done <- err
	}()
	var name string
	select {
	case name = <-declared:
	case <-time.After(10 * time.Second):
		t.Fatal("the probe did not declare its stream")
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("ProbeHeaders: got %v, want the end of its context", err)
		}
		if errors.Is(err, ErrProbeStreamLeft) {
			t.Errorf("ProbeHeaders: got %v, want its stream deleted", err)
		}
	case <-time.After(probeDeleteTimeout + 10*time.Second):
		t.Fatal("ProbeHeaders did not return after its context ended")
	}
	if hs.Arrays || hs.Tables || hs.Stream != name {
		t.Errorf("ProbeHeaders: got %+v, want no answer for stream %s", hs, name)
	}
	if amqptest.QueueExists(t, url, name) {
		t.Errorf("probe stream %q still exists after a probe cut short", name)
		_, _ = amqptest.Channel(t, url).QueueDelete(name, false, false, false)
	}
}
