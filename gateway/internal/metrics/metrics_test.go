package metrics

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBusStateCountsLossesAndTimeAway(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, Series{})
	m.BusState("consumer", true) // the first connect is not a reconnect
	m.BusState("consumer", false)
	m.BusState("consumer", false) // reported twice, counted once
	time.Sleep(20 * time.Millisecond)
	m.BusState("consumer", true)
	m.BusState("publisher", false)
	if got := testutil.ToFloat64(m.busDisconnects); got != 2 {
		t.Errorf("disconnects: got %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.busReconnects); got != 1 {
		t.Errorf("reconnects: got %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.busAway); got < 0.02 || got > 1 {
		t.Errorf("time away: got %vs, want about 0.02s", got)
	}
}

// TestTallyFlushIsExact: writes counted in a Tally reach nothing until Flush, then every
// one of them: the writes, bytes and deliveries by transport, and each latency in the
// bucket, count and sum a prometheus.Histogram with the same buckets gives.
func TestTallyFlushIsExact(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, Series{})
	want := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "herald_delivery_latency_seconds", Help: "reference", Buckets: latencyBuckets[:],
	})
	var tally Tally
	const n = 1000
	for i := range n {
		// Latencies from 0 to 12.5s, some on a bucket's bound exactly.
		d := time.Duration(i) * 12500 * time.Microsecond
		if i%100 == 0 {
			d = time.Duration(latencyBuckets[i/100] * float64(time.Second))
		}
		tally.DeliveryLatency(d)
		want.Observe(d.Seconds())
		tr := TransportWS
		if i%4 == 0 {
			tr = TransportSSE
		}
		tally.Wrote(100, 2, tr)
	}
	if got := testutil.ToFloat64(m.socketWrites); got != 0 {
		t.Fatalf("writes counted before the flush: %v", got)
	}
	m.Flush(&tally)
	for name, c := range map[string]prometheus.Collector{
		"writes": m.socketWrites, "bytes": m.bytesWritten,
		"ws deliveries": m.delivered[TransportWS], "sse deliveries": m.delivered[TransportSSE],
	} {
		wantN := map[string]float64{"writes": n, "bytes": 100 * n, "ws deliveries": 2 * n * 3 / 4, "sse deliveries": 2 * n / 4}[name]
		if got := testutil.ToFloat64(c); got != wantN {
			t.Errorf("%s: got %v, want %v", name, got, wantN)
		}
	}
	ref := prometheus.NewRegistry()
	ref.MustRegister(want)
	if got, want := histogramOf(t, reg, "herald_delivery_latency_seconds"), histogramOf(t, ref, "herald_delivery_latency_seconds"); got != want {
		t.Errorf("herald_delivery_latency_seconds:\n got %s\nwant %s (a prometheus.Histogram's)", got, want)
	}
	m.Flush(&tally) // empty: adds nothing
	if got := testutil.ToFloat64(m.socketWrites); got != n {
		t.Errorf("writes after a second flush: got %v, want %v", got, n)
	}
}

// histogramOf describes the histogram name in reg: its count, its sum and its buckets.
func histogramOf(t *testing.T, reg prometheus.Gatherer, name string) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		s := fmt.Sprintf("count=%d sum=%.9f", h.GetSampleCount(), h.GetSampleSum())
		for _, b := range h.GetBucket() {
			s += fmt.Sprintf(" le%g=%d", b.GetUpperBound(), b.GetCumulativeCount())
		}
		return s
	}
	t.Fatalf("no histogram %s", name)
	return ""
}
