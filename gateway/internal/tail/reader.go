package tail

// Reader reads a tail's entries above an offset, in order, at its caller's pace. A Reader
// is a small value: making one allocates nothing, and neither does reading. It is used by
// one goroutine at a time; any number of Readers read one Log at once.
type Reader[E any] struct {
	l       *Log[E]
	seq     uint64 // the seq of the next entry to look at
	since   int64  // entries at or below it are skipped
	through int64  // the reader has seen everything up to this offset
	resets  uint64 // the Log's Reset count when the reader was made
}

// Next returns the next held entry above the reader's since, or nil when it has read
// everything appended so far (Through then says up to which offset). It fails with
// ErrFellBehind when an entry above Through was evicted before the reader got to it, or
// the tail was Reset since the reader was made; Through then says how far it got, and
// Next fails the same way from then on. The entry is the tail's own: read it, never
// change it.
func (r *Reader[E]) Next() (*Entry[E], error) {
	for {
		// newest before end: if end shows nothing more, every held entry up to newest is
		// behind us (Append stores end before newest) and the control ones need no reading.
		newest := r.l.newest.Load()
		end := r.l.end.Load()
		if r.seq >= end {
			r.through = max(r.through, newest)
			return nil, nil
		}
		ring := r.l.ring.Load() // loaded after end: it holds r.seq unless evicted
		p := ring.slots[r.seq&ring.mask].Load()
		if p == nil || p.seq != r.seq {
			// Evicted (the appender moves the bounds before it empties a slot). Only what
			// is at or below the edge is evicted: if that is all at or below Through, the
			// reader has missed nothing and goes on from the oldest held entry.
			start, edge := r.l.bounds()
			if r.l.resets.Load() != r.resets || edge > r.through || start <= r.seq {
				return nil, ErrFellBehind
			}
			r.seq = start
			continue
		}
		r.seq++
		if p.Offset <= r.since {
			continue // appended after the reader was made, at or below its since: seen
		}
		r.through = p.Offset
		return p, nil
	}
}

// Through returns the offset up to which the reader has seen everything: since at first,
// then the offset of each entry Next returns, and at the end the newest appended then.
func (r *Reader[E]) Through() int64 { return r.through }

// Since returns the offset the reader was made to read after.
func (r *Reader[E]) Since() int64 { return r.since }

// Pending returns how many held entries the reader has not read yet: an estimate while
// the appender appends (entries at or below since count too).
func (r *Reader[E]) Pending() int {
	end := r.l.end.Load()
	if r.seq >= end {
		return 0
	}
	return int(end - r.seq)
}
