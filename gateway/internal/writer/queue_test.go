package writer

import (
	"encoding/json"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/wire"
)

// testOwner is an Owner that records what its queue tells it; SendClose writes a close
// frame as a transport would.
type testOwner struct {
	sock *Socket

	mu        sync.Mutex
	panics    int
	overflows []int
	closes    []int
	failures  []error
}

func (o *testOwner) SendClose(code int, _ string) {
	o.mu.Lock()
	o.closes = append(o.closes, code)
	o.mu.Unlock()
	_, _ = o.sock.Write([]byte{wire.CloseFrameByte, 2, byte(code >> 8), byte(code)})
	o.sock.CloseWrite()
}

func (o *testOwner) Overflowed(dropped int) {
	o.mu.Lock()
	o.overflows = append(o.overflows, dropped)
	o.mu.Unlock()
}

func (o *testOwner) Panicked(any) {
	o.mu.Lock()
	o.panics++
	o.mu.Unlock()
}

func (o *testOwner) WriteFailed(err error) {
	o.mu.Lock()
	o.failures = append(o.failures, err)
	o.mu.Unlock()
}

// newQueue returns a queue of w writing to the server's side of a loopback connection
// in enc, its owner, and the client's side.
func newQueue(t testing.TB, w *Writer, enc wire.Encoding) (*Queue, *testOwner, net.Conn) {
	t.Helper()
	server, client := loopback(t, 0)
	o := &testOwner{sock: &Socket{}}
	o.sock.Init(server, 10*time.Second)
	q := &Queue{}
	q.Init(w, o.sock, enc, o)
	return q, o, client
}

// benchFrame is a message frame of the load tool's size: a message of about 100 bytes of
// data, as the gateway encodes it (249 bytes).
func benchFrame(off int64) *wire.Frame {
	payload, _ := json.Marshal(struct {
		Op      string          `json:"op"`
		ID      string          `json:"id"`
		Channel string          `json:"channel"`
		Offset  int64           `json:"offset"`
		Time    string          `json:"time"`
		Data    json.RawMessage `json:"data"`
	}{"message", "0123456789abcdef0123456789abcdef", "bench", off, "2025-11-23T12:13:20.123456789Z",
		json.RawMessage(`{"ts":1763900000000000000,"seq":123456,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)})
	return wire.NewFrame(payload, off, time.Unix(1763900000, 123456789))
}

// TestPanicInAWriterWorker: a panic during a worker's turn at one connection (here, its
// compressor is broken) ends that connection only; the worker goes on writing for the
// others.
func TestPanicInAWriterWorker(t *testing.T) {
	w := New(Config{QueueBytes: 1 << 20, Workers: 1})
	defer w.Close()
	// flate refuses the level: compressing panics.
	victim, vo, vpeer := newQueue(t, w, wire.Encoding{Deflate: wire.NewDeflater(0, 42, nil)})
	other, _, opeer := newQueue(t, w, wire.Encoding{})
	if !victim.sock.Direct() {
		t.Skip("no non-blocking writes on this platform: no worker writes")
	}
	defer other.Finish()
	defer victim.Finish()

	for i := range 3 {
		f := wire.NewFrame([]byte(`{"op":"message"}`), int64(i), time.Now())
		victim.Enqueue(f)
		other.Enqueue(f)
		_ = opeer.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, len(f.Wire))
		if _, err := io.ReadFull(opeer, got); err != nil {
			t.Fatalf("the other connection, message %d: %v", i, err)
		}
	}
	_ = vpeer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(vpeer); len(b) > 0 {
		t.Errorf("the connection whose write panicked got %d bytes, want it closed", len(b))
	}
	vo.mu.Lock()
	defer vo.mu.Unlock()
	if vo.panics != 1 {
		t.Errorf("panics told: got %v, want 1", vo.panics)
	}
	if !victim.Closing() {
		t.Error("the connection whose write panicked is not closing")
	}
}

// TestWritesCountDeliveries: a write counts its bytes, one socket write, and the message
// frames in it as delivered (not the replies), with a delivery latency for each but a
// replayed one (its age is not a delivery latency): at once for a writeLoop goroutine (no
// tally), and at the flush for a worker, which counts into its tally until then.
func TestWritesCountDeliveries(t *testing.T) {
	t.Run("goroutine", func(t *testing.T) { testWritesCountDeliveries(t, false) })
	t.Run("worker", func(t *testing.T) { testWritesCountDeliveries(t, true) })
}

func testWritesCountDeliveries(t *testing.T, worker bool) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.Series{})
	q := &Queue{w: New(Config{QueueBytes: 1 << 20, Metrics: m})}
	replayed := wire.NewFrame([]byte(`2`), 4, time.Now().Add(-time.Hour))
	q.replayed.Store(replayed.Offset) // as EnqueueReplay notes it
	live := wire.NewFrame([]byte(`1`), 5, time.Now().Add(-time.Millisecond))
	reply := wire.Reply(map[string]string{"op": "ack"})
	if worker {
		var tally metrics.Tally
		q.wroteFrames([]*wire.Frame{live, replayed, reply}, 100, &tally)
		if n := gwtest.Counter(t, reg, "herald_socket_writes_total"); n != 0 {
			t.Errorf("herald_socket_writes_total before the worker's flush: got %v, want 0", n)
		}
		m.Flush(&tally)
	} else {
		q.wroteFrames([]*wire.Frame{live, replayed, reply}, 100, nil)
	}
	if n := gwtest.Counter(t, reg, "herald_messages_delivered_total"); n != 2 {
		t.Errorf("herald_messages_delivered_total: got %v, want 2", n)
	}
	if n := gwtest.Samples(t, reg, "herald_delivery_latency_seconds"); n != 1 {
		t.Errorf("herald_delivery_latency_seconds: got %d samples, want 1 (the live message's)", n)
	}
	if n := gwtest.Counter(t, reg, "herald_bytes_written_total"); n != 100 {
		t.Errorf("herald_bytes_written_total: got %v, want 100", n)
	}
	if n := gwtest.Counter(t, reg, "herald_socket_writes_total"); n != 1 {
		t.Errorf("herald_socket_writes_total: got %v, want 1", n)
	}
}

// TestOverflowClosesWithoutTheQueue: a frame that would take the queue over its cap
// closes the connection with 4008, drops what was queued, and tells the owner.
func TestOverflowClosesWithoutTheQueue(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := &testOwner{}
	q := &Queue{}
	q.InitUnwritten(New(Config{QueueBytes: 600, Metrics: metrics.New(reg, metrics.Series{})}), o)
	for i := range 3 {
		q.Enqueue(benchFrame(int64(i))) // 249 bytes each: the third is over 600
	}
	if frames, bytes := q.Depth(); frames != 0 || bytes != 0 {
		t.Errorf("queue after the overflow: %d frames, %d bytes; want it empty", frames, bytes)
	}
	if len(o.overflows) != 1 || o.overflows[0] != 3 {
		t.Errorf("owner told of overflows %v, want [3]", o.overflows)
	}
	if q.closeCode != wire.CloseSlowConsumer {
		t.Errorf("close code %d, want %d", q.closeCode, wire.CloseSlowConsumer)
	}
	if n := gwtest.CounterWith(t, reg, "herald_messages_dropped_total", "reason", metrics.DropSlowConsumer); n != 3 {
		t.Errorf("dropped as slow consumer: got %v, want 3", n)
	}
}
