package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkWrote is the bookkeeping of one write of one message frame, as a writer worker
// does it: counted in its Tally, flushed into the shared counters and histogram every 64
// writes (a worker flushes once per pass through its ready connections); serial, and by
// as many workers as cores at once (parallel), each with its own Tally.
func BenchmarkWrote(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		m := New(prometheus.NewRegistry(), Series{})
		var t Tally
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			t.DeliveryLatency(3 * time.Millisecond)
			t.Wrote(120, 1, TransportWS)
			if i++; i%64 == 0 {
				m.Flush(&t)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		m := New(prometheus.NewRegistry(), Series{})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var t Tally
			i := 0
			for pb.Next() {
				t.DeliveryLatency(3 * time.Millisecond)
				t.Wrote(120, 1, TransportWS)
				if i++; i%64 == 0 {
					m.Flush(&t)
				}
			}
			m.Flush(&t)
		})
	})
}
