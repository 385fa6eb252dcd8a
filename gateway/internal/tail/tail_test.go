package tail

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// clock is a test clock that moves only when told.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// value is what the tests hold: the offset again, to check that readers get the entry
// that was appended at that offset.
type value struct{ off int64 }

func newTest(t testing.TB, maxEntries int, maxAge time.Duration) (*Log[*value], *clock) {
	t.Helper()
	c := &clock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	l := New[*value](Config{MaxBytes: int64(maxEntries) * (EntryOverhead[*value]() + 100), MaxAge: maxAge, Now: c.now})
	return l, c
}

func entry(off int64, ch string, users ...string) Entry[*value] {
	return Entry[*value]{Offset: off, Size: 100, Channel: ch, Users: users, Value: &value{off}}
}

func mustAppend(t testing.TB, l *Log[*value], e Entry[*value]) {
	t.Helper()
	if err := l.Append(e); err != nil {
		t.Fatalf("append %d: %v", e.Offset, err)
	}
}

// readAll reads r to its end and returns the offsets it got.
func readAll(t testing.TB, r *Reader[*value]) ([]int64, error) {
	t.Helper()
	var got []int64
	for {
		e, err := r.Next()
		if err != nil {
			return got, err
		}
		if e == nil {
			return got, nil
		}
		if e.Value.off != e.Offset {
			t.Fatalf("entry at %d holds the value of %d", e.Offset, e.Value.off)
		}
		got = append(got, e.Offset)
	}
}

func TestReadServesOnlyWhatTheTailIsCompleteFor(t *testing.T) {
	l, _ := newTest(t, 4, time.Hour)
	if _, err := l.Read(-1); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("before Reset: Read(-1) = %v, want ErrNotHeld", err)
	}
	if _, known := l.Edge(); known {
		t.Fatal("before Reset: the edge is known")
	}
	l.Reset(9)                                            // the consumer's first message is at 10
	for _, off := range []int64{10, 11, 13, 17, 18, 20} { // 4 held at most: 10 and 11 go
		mustAppend(t, l, entry(off, "c"))
	}
	mustAppend(t, l, Entry[*value]{Offset: 21, Control: true})
	tests := []struct {
		since       int64
		want        []int64
		wantErr     error
		wantThrough int64
	}{
		{since: 9, wantErr: ErrNotHeld},                             // below the edge: 10 and 11 were evicted
		{since: 10, wantErr: ErrNotHeld},                            // below the edge
		{since: 11, want: []int64{13, 17, 18, 20}, wantThrough: 21}, // the edge itself
		{since: 12, want: []int64{13, 17, 18, 20}, wantThrough: 21}, // a skipped number
		{since: 17, want: []int64{18, 20}, wantThrough: 21},
		{since: 20, want: nil, wantThrough: 21}, // the newest held
		{since: 21, want: nil, wantThrough: 21}, // the control message
		{since: 30, want: nil, wantThrough: 30}, // ahead of this tail
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.since), func(t *testing.T) {
			r, err := l.Read(tt.since)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Read(%d) = %v, want %v", tt.since, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			got, err := readAll(t, &r)
			if err != nil {
				t.Fatalf("Next: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if r.Through() != tt.wantThrough {
				t.Errorf("Through() = %d, want %d", r.Through(), tt.wantThrough)
			}
		})
	}
	if edge, _ := l.Edge(); edge != 11 {
		t.Errorf("Edge() = %d, want 11 (the last evicted)", edge)
	}
	if n := l.Newest(); n != 21 {
		t.Errorf("Newest() = %d, want 21 (the control message)", n)
	}
}

func TestAppendRefusesOffsetsOutOfOrder(t *testing.T) {
	l, _ := newTest(t, 4, time.Hour)
	l.Reset(-1)
	mustAppend(t, l, entry(5, ""))
	for _, off := range []int64{5, 4} {
		if err := l.Append(entry(off, "")); !errors.Is(err, ErrOutOfOrder) {
			t.Errorf("Append(%d) after 5 = %v, want ErrOutOfOrder", off, err)
		}
	}
	if st := l.Stats(); st.Entries != 1 || st.Newest != 5 {
		t.Errorf("Stats() = %+v, want 1 entry, newest 5", st)
	}
}

func TestEntryTooLargeRestartsTheTailAfterIt(t *testing.T) {
	l, _ := newTest(t, 4, time.Hour)
	l.Reset(-1)
	mustAppend(t, l, entry(0, "c"))
	r, _ := l.Read(-1)
	big := entry(1, "c")
	big.Size = 1 << 30
	mustAppend(t, l, big)
	if edge, _ := l.Edge(); edge != 1 {
		t.Errorf("Edge() = %d, want 1: the tail cannot be complete before a message it does not hold", edge)
	}
	if _, err := readAll(t, &r); !errors.Is(err, ErrFellBehind) {
		t.Errorf("a reader from before it: %v, want ErrFellBehind", err)
	}
	if st := l.Stats(); st.Entries != 0 || st.Bytes != 0 {
		t.Errorf("Stats() = %+v, want empty", st)
	}
}

func TestAgeEvictsOnAppendAndTrim(t *testing.T) {
	l, c := newTest(t, 100, time.Minute)
	l.Reset(-1)
	mustAppend(t, l, entry(0, "c"))
	c.advance(30 * time.Second)
	mustAppend(t, l, entry(1, "c"))
	c.advance(31 * time.Second) // 0 is 61s old: out
	mustAppend(t, l, entry(2, "c"))
	if edge, _ := l.Edge(); edge != 0 {
		t.Errorf("after append: Edge() = %d, want 0", edge)
	}
	c.advance(time.Minute + time.Second) // 1 and 2 are over a minute old, and no message comes
	l.Trim()
	if st := l.Stats(); st.Entries != 0 || st.Edge != 2 || !st.Oldest.IsZero() {
		t.Errorf("after Trim: Stats() = %+v, want empty with edge 2", st)
	}
}

func TestReaderFallsBehindOnlyWhenItMissesSomething(t *testing.T) {
	l, _ := newTest(t, 3, time.Hour)
	l.Reset(-1)
	for off := int64(0); off < 3; off++ {
		mustAppend(t, l, entry(off, ""))
	}
	slow, _ := l.Read(-1)
	e, _ := slow.Next() // 0
	if e == nil || e.Offset != 0 {
		t.Fatalf("first Next = %v, want 0", e)
	}
	mustAppend(t, l, entry(3, "")) // evicts 0: the slow reader has it
	if got, err := readAll(t, &slow); err != nil || !slices.Equal(got, []int64{1, 2, 3}) {
		t.Fatalf("after 0 was evicted: got %v, %v; want [1 2 3]", got, err)
	}
	behind, _ := l.Read(3)
	mustAppend(t, l, entry(4, ""))
	mustAppend(t, l, entry(5, ""))
	mustAppend(t, l, entry(6, ""))
	mustAppend(t, l, entry(7, "")) // evicts 4, which behind has not read
	if got, err := readAll(t, &behind); !errors.Is(err, ErrFellBehind) || len(got) != 0 || behind.Through() != 3 {
		t.Errorf("got %v, %v, through %d; want ErrFellBehind through 3", got, err, behind.Through())
	}

	ahead, _ := l.Read(9) // a client that saw up to 9 elsewhere
	mustAppend(t, l, entry(8, ""))
	mustAppend(t, l, entry(9, ""))
	mustAppend(t, l, entry(10, "")) // evicts 5, 6, 7 over time: all at or below 9
	if got, err := readAll(t, &ahead); err != nil || !slices.Equal(got, []int64{10}) {
		t.Errorf("a reader ahead of the tail: got %v, %v; want [10]", got, err)
	}
}

func TestResetMakesEveryReaderFallBehind(t *testing.T) {
	l, _ := newTest(t, 8, time.Hour)
	l.Reset(-1)
	mustAppend(t, l, entry(0, ""))
	mid, _ := l.Read(-1)
	atEnd, _ := l.Read(0)
	if e, err := atEnd.Next(); e != nil || err != nil {
		t.Fatalf("at the end: %v, %v", e, err)
	}
	l.Reset(100) // a gap: 1..100 were never dispatched here
	mustAppend(t, l, entry(101, ""))
	for name, r := range map[string]*Reader[*value]{"mid": &mid, "at the end": &atEnd} {
		if _, err := readAll(t, r); !errors.Is(err, ErrFellBehind) {
			t.Errorf("%s: %v, want ErrFellBehind", name, err)
		}
	}
	if _, err := l.Read(50); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Read(50) after Reset(100) = %v, want ErrNotHeld", err)
	}
}

func TestHistoryFollowsOneChannel(t *testing.T) {
	l, _ := newTest(t, 6, time.Hour)
	l.Reset(-1)
	for off, ch := range []string{"a", "b", "a", "", "a", "b"} { // 0..5
		mustAppend(t, l, entry(int64(off), ch))
	}
	mustAppend(t, l, entry(6, "a", "ann"))
	onlyBob := func(e *Entry[*value]) bool { return len(e.Users) == 0 || slices.Contains(e.Users, "bob") }
	tests := []struct {
		name         string
		channel      string
		after        int64
		n            int
		keep         func(*Entry[*value]) bool
		want         []int64
		wantComplete bool
	}{
		{"last two of a", "a", -1, 2, nil, []int64{4, 6}, true},
		{"all of a, 0 evicted", "a", -1, 10, nil, []int64{2, 4, 6}, false},
		{"all of a after 0", "a", 0, 10, nil, []int64{2, 4, 6}, true},
		{"after 2", "a", 2, 10, nil, []int64{4, 6}, true},
		{"a for bob", "a", 0, 10, onlyBob, []int64{2, 4}, true},
		{"b, 0 evicted", "b", -1, 5, nil, []int64{1, 5}, false}, // 0 is gone: it could have been b's
		{"b after 0", "b", 0, 5, nil, []int64{1, 5}, true},
		{"no such channel", "z", 0, 5, nil, nil, true},
		{"no such channel, before the edge", "z", -1, 5, nil, nil, false},
		{"none asked", "a", -1, 0, nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, complete := l.History(tt.channel, tt.after, tt.n, tt.keep, nil)
			var offs []int64
			for _, e := range got {
				offs = append(offs, e.Offset)
			}
			if !slices.Equal(offs, tt.want) || complete != tt.wantComplete {
				t.Errorf("History(%q, %d, %d) = %v, %v; want %v, %v", tt.channel, tt.after, tt.n, offs, complete, tt.want, tt.wantComplete)
			}
		})
	}
}

func TestInsideKeepsAMarginFromTheEdge(t *testing.T) {
	l, _ := newTest(t, 100, time.Hour)
	if _, ok := l.Inside(2); ok {
		t.Error("Inside before Reset: known")
	}
	l.Reset(4)
	if off, _ := l.Inside(2); off != 4 {
		t.Errorf("empty: Inside(2) = %d, want the edge 4", off)
	}
	for _, off := range []int64{5, 7, 9, 11} {
		mustAppend(t, l, entry(off, ""))
	}
	for n, want := range map[int]int64{0: 5, 2: 9, 10: 11} {
		if off, _ := l.Inside(n); off != want {
			t.Errorf("Inside(%d) = %d, want %d", n, off, want)
		}
	}
}

// TestRingGrowsUnderAReader fills the tail past its first ring while a reader reads: the
// reader gets every entry once, in order.
func TestRingGrowsUnderAReader(t *testing.T) {
	l, _ := newTest(t, 10*minSlots, time.Hour)
	l.Reset(-1)
	r, _ := l.Read(-1)
	var got []int64
	for off := int64(0); off < 5*minSlots; off++ {
		mustAppend(t, l, entry(off, ""))
		if off%7 == 0 {
			part, err := readAll(t, &r)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, part...)
		}
	}
	part, _ := readAll(t, &r)
	got = append(got, part...)
	if len(got) != 5*minSlots || got[0] != 0 || got[len(got)-1] != 5*minSlots-1 {
		t.Fatalf("got %d entries (%v .. %v), want %d", len(got), got[:1], got[len(got)-1:], 5*minSlots)
	}
	for i := range got {
		if got[i] != int64(i) {
			t.Fatalf("entry %d is %d", i, got[i])
		}
	}
}

// TestChannelIndexForgetsEvictedChannels appends each message to a channel of its own: the
// index of channels holds only those with a held entry, so it stays as small as the tail.
func TestChannelIndexForgetsEvictedChannels(t *testing.T) {
	l, _ := newTest(t, 10, time.Hour)
	l.Reset(-1)
	for off := range int64(1000) {
		mustAppend(t, l, entry(off, fmt.Sprintf("user-%d", off)))
	}
	if n := len(l.heads); n != 10 {
		t.Errorf("the index holds %d channels, want 10 (one per held entry)", n)
	}
	if got, complete := l.History("user-999", 998, 5, nil, nil); len(got) != 1 || !complete {
		t.Errorf("History of the newest channel = %d entries, %v; want 1, complete", len(got), complete)
	}
}

// TestMaxEntriesBoundsTheCount: with MaxEntries (the embedded bus's --retain-messages) the
// tail holds at most that many entries, whatever their bytes, and the edge follows.
func TestMaxEntriesBoundsTheCount(t *testing.T) {
	l := New[*value](Config{MaxEntries: 10, MaxAge: time.Hour})
	l.Reset(-1)
	for off := range int64(30) {
		mustAppend(t, l, entry(off, "c"))
	}
	if st := l.Stats(); st.Entries != 10 || st.Edge != 19 {
		t.Fatalf("holds %d entries, edge %d; want 10 after 19", st.Entries, st.Edge)
	}
	if _, err := l.Read(18); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("read after 18: %v, want ErrNotHeld", err)
	}
	r, err := l.Read(19)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := readAll(t, &r); !slices.Equal(got, []int64{20, 21, 22, 23, 24, 25, 26, 27, 28, 29}) {
		t.Fatalf("read %v", got)
	}
}
