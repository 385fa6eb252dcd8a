// Package gwtest holds the helpers that the gateway's tests share: a logger that writes
// to the test's log, a wait for a condition, and readers of a Prometheus registry. It is
// imported by _test.go files only, and imports nothing of the gateway, so that the tests
// of every package under gateway/ may use it.
package gwtest

import (
	"encoding/binary"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Logger returns a logger, at debug level, whose lines go to t's log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// WaitFor waits until cond holds, checking every 10ms, and fails t after 10 seconds.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Counter returns the sum of the series of counter or gauge name in reg.
func Counter(t testing.TB, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	return CounterWith(t, reg, name, "", "")
}

// CounterWith returns the sum of the series of counter or gauge name in reg whose label
// has value (every series, when label is "").
func CounterWith(t testing.TB, reg prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	var sum float64
	eachSeries(t, reg, name, func(labels map[string]string, v float64, _ uint64) {
		if label == "" || labels[label] == value {
			sum += v
		}
	})
	return sum
}

// Samples returns how many observations histogram name in reg holds, over its series.
func Samples(t testing.TB, reg prometheus.Gatherer, name string) uint64 {
	t.Helper()
	var n uint64
	eachSeries(t, reg, name, func(_ map[string]string, _ float64, samples uint64) { n += samples })
	return n
}

// eachSeries gathers reg and calls fn with each series of metric name: its labels, its
// value (a counter's or a gauge's) and its samples (a histogram's).
func eachSeries(t testing.TB, reg prometheus.Gatherer, name string, fn func(labels map[string]string, v float64, samples uint64)) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			fn(labels, m.GetCounter().GetValue()+m.GetGauge().GetValue(), m.GetHistogram().GetSampleCount())
		}
	}
}

// FrameHeader is the header of a WebSocket frame (RFC 6455 section 5.2), written out here
// rather than by the gateway's code, for the tests that send frames of their own: its
// first byte b0 (FIN, RSV bits, opcode), the mask bit where masked, and the payload
// length n in 7, 16 or 64 bits. A masked frame's key follows it.
func FrameHeader(b0 byte, masked bool, n uint64) []byte {
	hdr := []byte{b0, 0}
	if masked {
		hdr[1] = 0x80
	}
	switch {
	case n < 126:
		hdr[1] |= byte(n)
	case n <= 0xffff:
		hdr[1] |= 126
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
	default:
		hdr[1] |= 127
		hdr = binary.BigEndian.AppendUint64(hdr, n)
	}
	return hdr
}
