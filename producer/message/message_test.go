package message

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestOffsetID(t *testing.T) {
	for _, tc := range []struct {
		offset int64
		want   string
	}{{0, "offset-0"}, {4711, "offset-4711"}, {1 << 62, "offset-4611686018427387904"}} {
		if got := OffsetID(tc.offset); got != tc.want || !IsOffsetID(got) {
			t.Errorf("OffsetID(%d): got %q (IsOffsetID %v), want %q", tc.offset, got, IsOffsetID(got), tc.want)
		}
	}
	for range 100 {
		if id := NewID(); IsOffsetID(id) {
			t.Fatalf("NewID: got %q, an id of the offset form", id)
		}
	}
}

// TestValidateReservesOffsetIDs: no publisher may choose an id of the form the log gives
// to messages published without one, so those never collide with a chosen id.
func TestValidateReservesOffsetIDs(t *testing.T) {
	m := Message{ID: "offset-12", Data: json.RawMessage(`1`)}
	if err := m.Validate(); !errors.Is(err, ErrBadID) {
		t.Errorf("Validate of id %q: got %v, want ErrBadID", m.ID, err)
	}
	for _, id := range []string{"", "order-17", "offset", "my-offset-1"} {
		m := Message{ID: id, Data: json.RawMessage(`1`)}
		if err := m.Validate(); err != nil {
			t.Errorf("Validate of id %q: got %v, want nil", id, err)
		}
	}
}
