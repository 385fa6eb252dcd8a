package gateway

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/heraldgw/herald/producer/message"
)

// TestMessageFrameWithoutTime: a message whose publisher gave no time goes on the wire
// without one, and the frame keeps the time the gateway received it, for the delivery
// count and latency only (the writer counts a frame with a clock as a delivery:
// internal/writer's TestWritesCountDeliveries).
func TestMessageFrameWithoutTime(t *testing.T) {
	received := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	published := received.Add(-time.Second)
	for _, tc := range []struct {
		name     string
		m        message.Message
		wantTime any       // the frame's time field; nil: absent
		wantPub  time.Time // the frame's clock
	}{
		{"no time", message.Message{ID: "a", Offset: 3, Data: json.RawMessage(`1`)}, nil, received},
		{"a time", message.Message{ID: "b", Offset: 4, Data: json.RawMessage(`1`), Time: published},
			"2025-03-04T05:06:06Z", published},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newMessageFrame(tc.m, received)
			var got map[string]any
			if err := json.Unmarshal(f.Payload(), &got); err != nil {
				t.Fatal(err)
			}
			if tm, ok := got["time"]; tm != tc.wantTime || ok != (tc.wantTime != nil) {
				t.Errorf("time field: got %v (present %v), want %v", tm, ok, tc.wantTime)
			}
			if !f.Published.Equal(tc.wantPub) {
				t.Errorf("frame clock: got %v, want %v", f.Published, tc.wantPub)
			}
		})
	}
	// A replayed message without a time is counted too (its clock is when it was read).
	if f := newMessageFrame(message.Message{ID: "c", Offset: 5, Data: json.RawMessage(`1`)}, time.Time{}); f.Published.IsZero() {
		t.Error("replayed frame without a time: got no clock, want now")
	}
}

// TestHubDedupClockWithoutTime: the deduplication window of messages without a time runs
// on the time the hub received them, so an id comes back after the window; and an id the
// log derived from an offset is never taken for a retry.
func TestHubDedupClockWithoutTime(t *testing.T) {
	const window = 50 * time.Millisecond
	h := NewHub(HubConfig{DedupWindow: window})
	r := newRecorder("r", "")
	h.join(r, nil, func(int64, bool) {})
	send := func(id string, off int64) {
		h.Dispatch(message.Message{ID: id, Offset: off, Data: json.RawMessage(`1`)})
	}
	send("retry", 1)
	send("retry", 2) // within the window: a retry, dropped
	time.Sleep(2 * window)
	send("retry", 3) // past the window: delivered again
	send(message.OffsetID(4), 4)
	send(message.OffsetID(4), 5) // the same derived id (a stream deleted and declared again)
	got := r.offsets()
	if want := []int64{1, 3, 4, 5}; !slices.Equal(got, want) {
		t.Errorf("delivered offsets: got %v, want %v", got, want)
	}
}
