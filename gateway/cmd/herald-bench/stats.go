package main

import (
	"bytes"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds, from 1µs to 100s, to 3 significant figures.
const (
	histMin  = 1
	histMax  = 100_000_000
	histSigs = 3
)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, histSigs) }

// recorder collects the receivers' deliveries: a count and a latency histogram, in
// shards so that thousands of receiver goroutines rarely wait for one another. The
// reporting goroutine drains the shards into one interval histogram once a second.
type recorder struct {
	shards []shard
}

type shard struct {
	mu    sync.Mutex // protects hist and count
	hist  *hdrhistogram.Histogram
	count int64 // deliveries since the last drain (with or without a timestamp)
	_     [40]byte
}

func newRecorder(n int) *recorder {
	r := &recorder{shards: make([]shard, n)}
	for i := range r.shards {
		r.shards[i].hist = newHist()
	}
	return r
}

// record counts one delivery to client i, sent at sentNanos (unix).
func (r *recorder) record(i int, sentNanos int64, now time.Time) {
	us := (now.UnixNano() - sentNanos) / 1e3
	s := &r.shards[i%len(r.shards)]
	s.mu.Lock()
	s.count++
	_ = s.hist.RecordValue(min(max(us, histMin), histMax))
	s.mu.Unlock()
}

// drain adds every shard's deliveries since the last drain to into (reset first) and
// returns their number.
func (r *recorder) drain(into *hdrhistogram.Histogram) int64 {
	into.Reset()
	var n int64
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		if s.count > 0 {
			into.Merge(s.hist)
			s.hist.Reset()
			n += s.count
			s.count = 0
		}
		s.mu.Unlock()
	}
	return n
}

// tsKey is the key of the send time (unix nanoseconds) in every message's data.
var tsKey = []byte(`"ts":`)

// scanTS returns the send time in a message frame, or 0 where it has none. It looks only
// for the key, without parsing the JSON.
func scanTS(frame []byte) int64 {
	i := bytes.Index(frame, tsKey)
	if i < 0 {
		return 0
	}
	var v int64
	for _, c := range frame[i+len(tsKey):] {
		if c < '0' || c > '9' {
			break
		}
		v = v*10 + int64(c-'0')
	}
	return v
}

// latencySummary is a histogram's figures in milliseconds.
type latencySummary struct {
	Count  int64   `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
}

func summarize(h *hdrhistogram.Histogram) latencySummary {
	ms := func(us int64) float64 { return float64(us) / 1e3 }
	return latencySummary{
		Count:  h.TotalCount(),
		MeanMs: h.Mean() / 1e3,
		P50Ms:  ms(h.ValueAtQuantile(50)),
		P90Ms:  ms(h.ValueAtQuantile(90)),
		P99Ms:  ms(h.ValueAtQuantile(99)),
		P999Ms: ms(h.ValueAtQuantile(99.9)),
		MaxMs:  ms(h.Max()),
	}
}
