package tail

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// frame stands for the gateway's encoded frame: the tail holds a pointer to it.
type frame struct{ wire []byte }

// fullTail returns a tail holding n entries over 100 channels, each a 238-byte frame (a
// 100-byte message as Herald encodes it).
func fullTail(b *testing.B, n int) (*Log[*frame], []string) {
	b.Helper()
	channels := make([]string, 100)
	for i := range channels {
		channels[i] = fmt.Sprintf("channel-%d", i)
	}
	l := New[*frame](Config{MaxBytes: int64(n) * (EntryOverhead[*frame]() + 238), MaxAge: time.Hour})
	l.Reset(-1)
	for off := range int64(n) {
		f := &frame{wire: make([]byte, 238)}
		if err := l.Append(Entry[*frame]{Offset: off, Size: len(f.wire), Channel: channels[off%100], Value: f}); err != nil {
			b.Fatal(err)
		}
	}
	return l, channels
}

// BenchmarkAppend is the cost the hub's dispatch pays per message: append to a full tail
// (so every append evicts one), over 100 channels.
func BenchmarkAppend(b *testing.B) {
	l, channels := fullTail(b, 100000)
	f := &frame{wire: make([]byte, 238)}
	off := int64(100000)
	b.ReportAllocs()
	for b.Loop() {
		if err := l.Append(Entry[*frame]{Offset: off, Size: len(f.wire), Channel: channels[off%100], Value: f}); err != nil {
			b.Fatal(err)
		}
		off++
	}
}

// conn stands for a connection's write queue: a replay enqueues the shared frame pointers.
type conn struct{ queue []*frame }

// BenchmarkReplay1000To1000 replays the 1,000 messages of a tail to 1,000 readers, one
// after the other: one op is the whole replay (a million deliveries). Each reader queues
// the tail's own frame pointers into its connection's queue; allocs/op shows that nothing
// is allocated per reader or per entry (the queues are made before the timer starts).
func BenchmarkReplay1000To1000(b *testing.B) {
	l, _ := fullTail(b, 1000)
	conns := make([]conn, 1000)
	for i := range conns {
		conns[i].queue = make([]*frame, 0, 1000)
	}
	b.ReportAllocs()
	for b.Loop() {
		for i := range conns {
			c := &conns[i]
			c.queue = c.queue[:0]
			r, err := l.Read(-1)
			if err != nil {
				b.Fatal(err)
			}
			for {
				e, err := r.Next()
				if err != nil {
					b.Fatal(err)
				}
				if e == nil {
					break
				}
				c.queue = append(c.queue, e.Value)
			}
			if len(c.queue) != 1000 {
				b.Fatalf("replayed %d, want 1000", len(c.queue))
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6, "ns/delivery")
}

// BenchmarkReplay1000To1000Parallel is the same replay with the readers spread over every
// core at once, while the dispatch goroutine appends (to a tail large enough that no
// reader falls behind).
func BenchmarkReplay1000To1000Parallel(b *testing.B) {
	l, _ := fullTail(b, 1000)
	l.maxBytes *= 1000 // room for what is appended meanwhile
	conns := make([]conn, 1000)
	for i := range conns {
		conns[i].queue = make([]*frame, 0, 1000)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		f := &frame{wire: make([]byte, 238)}
		for off := int64(1000); ; off++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = l.Append(Entry[*frame]{Offset: off, Size: len(f.wire), Value: f})
			time.Sleep(100 * time.Microsecond)
		}
	})
	b.ReportAllocs()
	for b.Loop() {
		var readers sync.WaitGroup
		for g := range 4 {
			readers.Go(func() {
				for i := g; i < len(conns); i += 4 {
					c := &conns[i]
					c.queue = c.queue[:0]
					r, _ := l.Read(-1)
					for range 1000 {
						e, err := r.Next()
						if err != nil || e == nil {
							panic(fmt.Sprintf("reader %d: %v, %v", i, e, err))
						}
						c.queue = append(c.queue, e.Value)
					}
				}
			})
		}
		readers.Wait()
	}
	close(stop)
	wg.Wait()
}

// BenchmarkHistory is a subscribe with history: the last 50 messages of one channel of
// 100 in a tail of 100,000 entries.
func BenchmarkHistory(b *testing.B) {
	l, channels := fullTail(b, 100000)
	dst := make([]*Entry[*frame], 0, 50)
	b.ReportAllocs()
	for b.Loop() {
		got, complete := l.History(channels[42], -1, 50, nil, dst[:0])
		if len(got) != 50 || !complete {
			b.Fatalf("got %d, %v", len(got), complete)
		}
	}
}

// BenchmarkRead is finding a since in a tail of 100,000 entries (a binary search).
func BenchmarkRead(b *testing.B) {
	l, _ := fullTail(b, 100000)
	b.ReportAllocs()
	since := int64(0)
	for b.Loop() {
		r, err := l.Read(since)
		if err != nil || r.Pending() == 0 {
			b.Fatal(err)
		}
		since = (since + 7919) % 99999
	}
}
