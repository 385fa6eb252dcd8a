package metrics

import (
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
