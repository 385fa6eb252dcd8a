package tail

import (
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// model is the tail as a plain slice, for the property test: what Log must do, written
// the simplest way.
type model struct {
	maxBytes, maxAge, overhead int64
	held                       []modelEntry
	edge, newest               int64
	bytes                      int64
	resets                     int
}

type modelEntry struct {
	off     int64
	size    int64
	channel string
	users   []string
	added   int64
}

func (m *model) evictOldest() {
	m.edge = m.held[0].off
	m.bytes -= m.held[0].size + m.overhead
	m.held = m.held[1:]
}

func (m *model) append(e modelEntry, control bool) {
	for len(m.held) > 0 && e.added-m.held[0].added > m.maxAge {
		m.evictOldest()
	}
	if control {
		m.newest = e.off
		return
	}
	if e.size+m.overhead > m.maxBytes {
		m.reset(e.off)
		return
	}
	for m.bytes+e.size+m.overhead > m.maxBytes {
		m.evictOldest()
	}
	m.held = append(m.held, e)
	m.bytes += e.size + m.overhead
	m.newest = e.off
}

func (m *model) trim(now int64) {
	for len(m.held) > 0 && now-m.held[0].added > m.maxAge {
		m.evictOldest()
	}
}

func (m *model) reset(edge int64) {
	m.held, m.bytes, m.edge, m.newest = nil, 0, edge, edge
	m.resets++
}

// modelReader is what a Reader must answer, by the model.
type modelReader struct {
	since, through int64
	resets         int
	failed         bool
}

// next is what Reader.Next must return: the offset of the entry (-1 for nil), or fell.
func (m *model) next(r *modelReader) (off int64, fell bool) {
	if r.failed || r.resets != m.resets || m.edge > r.through {
		r.failed = true
		return -1, true
	}
	for _, e := range m.held {
		if e.off > r.through {
			r.through = e.off
			return e.off, false
		}
	}
	r.through = max(r.through, m.newest)
	return -1, false
}

// TestLogAgreesWithTheModel runs random appends (held, control, too large, with skipped
// offsets, over a few channels), clock moves, trims and resets against Log and the model,
// with readers that read a few entries at a time in between, and checks every answer.
func TestLogAgreesWithTheModel(t *testing.T) {
	for seed := uint64(1); seed <= 40; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed*7919))
		maxEntries := 1 + rng.IntN(12)
		l, c := newTest(t, maxEntries, time.Duration(1+rng.IntN(20))*time.Second)
		m := &model{maxBytes: l.maxBytes, maxAge: l.maxAge, overhead: l.overhead, newest: -1, edge: noEdge}
		type pair struct {
			r  Reader[*value]
			mr modelReader
		}
		var readers []*pair
		l.Reset(-1)
		m.reset(-1)
		channels := []string{"", "a", "b", "c"}
		for step := range 400 {
			switch op := rng.IntN(100); {
			case op < 55: // a held entry
				e := entry(m.newest+1+int64(rng.IntN(3)), channels[rng.IntN(len(channels))])
				e.Size = rng.IntN(150)
				if rng.IntN(50) == 0 {
					e.Size = 1 << 30
				}
				if rng.IntN(4) == 0 {
					e.Users = []string{[]string{"ann", "bob"}[rng.IntN(2)]}
				}
				mustAppend(t, l, e)
				m.append(modelEntry{off: e.Offset, size: int64(e.Size), channel: e.Channel, users: e.Users, added: c.ns.Load()}, false)
			case op < 62: // a control message
				off := m.newest + 1 + int64(rng.IntN(3))
				mustAppend(t, l, Entry[*value]{Offset: off, Control: true})
				m.append(modelEntry{off: off, added: c.ns.Load()}, true)
			case op < 72:
				c.advance(time.Duration(rng.IntN(3000)) * time.Millisecond)
			case op < 75:
				l.Trim()
				m.trim(c.ns.Load())
			case op < 77:
				edge := m.newest + int64(rng.IntN(4))
				l.Reset(edge)
				m.reset(edge)
			case op < 87: // a new reader
				since := m.edge - 2 + int64(rng.IntN(int(m.newest-m.edge)+5))
				r, err := l.Read(since)
				if wantErr := since < m.edge; wantErr != errors.Is(err, ErrNotHeld) {
					t.Fatalf("seed %d step %d: Read(%d) with edge %d: %v", seed, step, since, m.edge, err)
				}
				if err == nil {
					readers = append(readers, &pair{r: r, mr: modelReader{since: since, through: since, resets: m.resets}})
				}
			default: // a reader reads a few
				if len(readers) == 0 {
					continue
				}
				p := readers[rng.IntN(len(readers))]
				for range 1 + rng.IntN(4) {
					e, err := p.r.Next()
					wantOff, wantFell := m.next(&p.mr)
					gotOff := int64(-1)
					if e != nil {
						gotOff = e.Offset
					}
					if gotOff != wantOff || errors.Is(err, ErrFellBehind) != wantFell || (err != nil && !wantFell) {
						t.Fatalf("seed %d step %d: reader since %d: Next = %d, %v; want %d, fell %v", seed, step, p.mr.since, gotOff, err, wantOff, wantFell)
					}
					if !wantFell && p.r.Through() != p.mr.through {
						t.Fatalf("seed %d step %d: Through() = %d, want %d", seed, step, p.r.Through(), p.mr.through)
					}
				}
			}
			checkState(t, l, m, rng, seed, step)
		}
	}
}

// checkState compares the state, a history query and Inside with the model.
func checkState(t *testing.T, l *Log[*value], m *model, rng *rand.Rand, seed uint64, step int) {
	t.Helper()
	st := l.Stats()
	wantOldest := time.Time{}
	if len(m.held) > 0 {
		wantOldest = time.Unix(0, m.held[0].added)
	}
	if st.Entries != len(m.held) || st.Bytes != m.bytes || st.Edge != m.edge || st.Newest != m.newest || !st.Oldest.Equal(wantOldest) {
		t.Fatalf("seed %d step %d: Stats() = %+v, want %d entries, %d bytes, edge %d, newest %d, oldest %v",
			seed, step, st, len(m.held), m.bytes, m.edge, m.newest, wantOldest)
	}
	ch := []string{"a", "b", "c"}[rng.IntN(3)]
	after := m.edge - 2 + int64(rng.IntN(int(m.newest-m.edge)+4))
	n := rng.IntN(5)
	var keep func(*Entry[*value]) bool
	forBob := rng.IntN(2) == 0
	if forBob {
		keep = func(e *Entry[*value]) bool { return len(e.Users) == 0 || slices.Contains(e.Users, "bob") }
	}
	var want []int64
	for i := len(m.held) - 1; i >= 0 && len(want) < n; i-- {
		e := m.held[i]
		if e.channel == ch && e.off > after && (!forBob || len(e.users) == 0 || slices.Contains(e.users, "bob")) {
			want = append(want, e.off)
		}
	}
	slices.Reverse(want)
	wantComplete := len(want) == n || m.edge <= after
	got, complete := l.History(ch, after, n, keep, nil)
	var offs []int64
	for _, e := range got {
		offs = append(offs, e.Offset)
	}
	if !slices.Equal(offs, want) || complete != wantComplete {
		t.Fatalf("seed %d step %d: History(%q, %d, %d) = %v, %v; want %v, %v", seed, step, ch, after, n, offs, complete, want, wantComplete)
	}
	k := rng.IntN(4)
	wantInside := max(m.edge, m.newest)
	if len(m.held) > 0 {
		wantInside = m.held[min(k, len(m.held)-1)].off
	}
	if got, _ := l.Inside(k); got != wantInside {
		t.Fatalf("seed %d step %d: Inside(%d) = %d, want %d", seed, step, k, got, wantInside)
	}
}

// TestConcurrentReadersSeeContiguousRuns appends fast to a small tail while readers read
// from random places and History walks channels, all at once (run it with -race): every
// reader's entries must be exactly the held entries between its since and its Through,
// whatever the evictions, ring growths and resets did meanwhile.
func TestConcurrentReadersSeeContiguousRuns(t *testing.T) {
	l := New[*value](Config{MaxBytes: 300 * (EntryOverhead[*value]() + 100), MaxAge: time.Hour})
	l.Reset(-1)
	const appends = 100000
	// held lists the offsets held, in order, by the appender; readers check against it
	// once the appender is done. resets are offsets where the tail restarted.
	var held []int64
	heldCh := map[int64]string{}
	done := make(chan struct{})
	type run struct {
		since, through int64
		got            []int64
		channel        string // for history runs
	}
	var mu sync.Mutex
	var runs []run
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			for {
				select {
				case <-done:
					return
				default:
				}
				newest := l.Newest()
				edge, _ := l.Edge()
				since := newest - int64(rng.IntN(int(min(max(newest-edge, 0), 400))+2))
				if i%3 == 0 { // a history walk
					ch := []string{"a", "b"}[rng.IntN(2)]
					es, _ := l.History(ch, since, 1+rng.IntN(50), nil, nil)
					rn := run{since: since, channel: ch}
					for _, e := range es {
						rn.got = append(rn.got, e.Offset)
					}
					mu.Lock()
					runs = append(runs, rn)
					mu.Unlock()
					continue
				}
				r, err := l.Read(since)
				if err != nil {
					continue
				}
				rn := run{since: since}
				for {
					e, err := r.Next()
					if err != nil || e == nil {
						break
					}
					if e.Value.off != e.Offset {
						t.Errorf("entry %d holds value %d", e.Offset, e.Value.off)
					}
					rn.got = append(rn.got, e.Offset)
					if rng.IntN(8) == 0 {
						time.Sleep(time.Microsecond) // a slow client
					}
				}
				rn.through = r.Through()
				mu.Lock()
				runs = append(runs, rn)
				mu.Unlock()
			}
		})
	}
	rng := rand.New(rand.NewPCG(99, 1))
	off := int64(-1)
	for range appends {
		off += 1 + int64(rng.IntN(2))
		ch := []string{"", "a", "b"}[rng.IntN(3)]
		switch rng.IntN(1000) {
		case 0:
			off += 5
			l.Reset(off) // a gap
			continue
		case 1, 2, 3:
			if err := l.Append(Entry[*value]{Offset: off, Control: true}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := l.Append(Entry[*value]{Offset: off, Size: 100, Channel: ch, Value: &value{off}}); err != nil {
			t.Fatal(err)
		}
		held = append(held, off)
		heldCh[off] = ch
	}
	close(done)
	wg.Wait()
	reads, walks := 0, 0
	for _, rn := range runs {
		if rn.channel != "" {
			walks++
			// A walk gives the channel's entries in order with none between them missing.
			if len(rn.got) == 0 {
				continue
			}
			lo, _ := slices.BinarySearch(held, rn.got[0])
			var want []int64
			for _, o := range held[lo:] {
				if o > rn.got[len(rn.got)-1] {
					break
				}
				if heldCh[o] == rn.channel {
					want = append(want, o)
				}
			}
			if !slices.Equal(rn.got, want) || rn.got[0] <= rn.since {
				t.Fatalf("history of %s after %d: got %v, want %v", rn.channel, rn.since, rn.got, want)
			}
			continue
		}
		reads++
		lo, _ := slices.BinarySearch(held, rn.since+1)
		hi, _ := slices.BinarySearch(held, rn.through+1)
		if want := held[lo:hi]; !slices.Equal(rn.got, want) {
			t.Fatalf("reader since %d through %d: got %d entries, want %d (%v...)", rn.since, rn.through, len(rn.got), len(want), want[:min(len(want), 5)])
		}
	}
	if reads < 100 || walks < 100 {
		t.Fatalf("only %d reads and %d history walks ran", reads, walks)
	}
	t.Logf("%d reads and %d history walks checked", reads, walks)
}
