package catchup

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldgw/herald/producer/message"
)

// TestThousandMembersShareFewReaders resumes 1,000 members with sinces spread over the
// log, served by 4 readers: every member gets every message after its since once, in
// order, and is caught up at the edge; no more than 4 reads run at once, and far fewer
// reads than members were made. With a small buffer, members of equal speed fall off
// their groups now and then and wait again: the result must be the same.
func TestThousandMembersShareFewReaders(t *testing.T) {
	for _, tt := range []struct {
		name        string
		bufferBytes int64
	}{
		{"buffer holds a whole read", 0},
		{"small buffer: members fall behind", 40 * (100 + 200)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := newFakeLog(2500)
			const edgeAt = 2000
			p, c, _ := newPool(t, l, newEdge(edgeAt), Config[message.Message]{Readers: 4, Window: 100, BufferBytes: tt.bufferBytes})
			rng := rand.New(rand.NewPCG(1, 2))
			results := make([]result, 1000)
			var wg sync.WaitGroup
			for i := range results {
				since := int64(rng.IntN(edgeAt)) - 1
				m := p.Resume(since)
				wg.Go(func() { results[i] = drain(m, since, nil) })
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			within(t, "1,000 members", done)
			for _, r := range results {
				checkCaughtUp(t, l, r, edgeAt)
			}
			attached, requeued, _, _ := c.get()
			t.Logf("reads of the log: %d (for 1,000 members), at most %d at once, requeued %v", l.reads.Load(), l.maxRunning.Load(), requeued)
			if n := l.maxRunning.Load(); n > 4 {
				t.Errorf("%d reads ran at once, want at most 4", n)
			}
			if n := l.reads.Load(); n != int64(attached) || (tt.bufferBytes == 0 && n > 100) {
				t.Errorf("%d reads (hooks: %d attached), want far fewer than 1,000 members", n, attached)
			}
			if st := p.Stats(); st != (Stats{}) {
				t.Errorf("after: Stats() = %+v, want zero", st)
			}
		})
	}
}

// TestSlowMemberDoesNotHoldItsGroup runs five fast members and one that stops reading,
// with a buffer of about 200 messages: the fast ones are caught up while the slow one
// reads nothing more (the group did not wait for it). When it reads again it has fallen
// off: it waits again for a reader and gets the rest from the log, or, where memory holds
// its position by then, it is caught up at once. Either way it gets everything once, in
// order.
func TestSlowMemberDoesNotHoldItsGroup(t *testing.T) {
	for _, tt := range []struct {
		name      string
		edgeAfter int64 // the edge once the fast ones are done
	}{
		{"waits again for a reader", 900},
		{"memory takes over", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := newFakeLog(1000)
			e := newEdge(900)
			p, c, _ := newPool(t, l, e, Config[message.Message]{Readers: 1, BufferBytes: 200 * (100 + 200)})
			var fast sync.WaitGroup
			fastResults := make([]result, 5)
			slow := p.Resume(-1)
			for i := range fastResults {
				m := p.Resume(-1)
				fast.Go(func() { fastResults[i] = drain(m, -1, nil) })
			}
			release := make(chan struct{})
			slowDone := make(chan result, 1)
			go func() {
				slowDone <- drain(slow, -1, func(n int) {
					if n == 1 {
						<-release // it has one message and stops reading
					}
				})
			}()
			fastDone := make(chan struct{})
			go func() { fast.Wait(); close(fastDone) }()
			within(t, "the fast members, while the slow one does not read", fastDone)
			for _, r := range fastResults {
				checkCaughtUp(t, l, r, 900)
			}
			attachedBefore, _, _, _ := c.get()
			e.off.Store(tt.edgeAfter)
			close(release)
			var r result
			select {
			case r = <-slowDone:
			case <-time.After(30 * time.Second):
				t.Fatal("the slow member did not finish")
			}
			checkCaughtUp(t, l, r, tt.edgeAfter)
			attached, requeued, _, _ := c.get()
			t.Logf("readers attached %d, requeued %v", attached, requeued)
			if tt.edgeAfter == 0 {
				if r.pos != 0 || len(r.got) != 1 || attached != attachedBefore {
					t.Errorf("slow member: caught up at %d with %d messages, %d new reads; want at 0 with its 1 message, no read", r.pos, len(r.got), attached-attachedBefore)
				}
			} else if r.pos < 900 || attached == attachedBefore || requeued["behind"] == 0 {
				t.Errorf("slow member: caught up at %d, %d new reads, requeued %v; want past 900 after waiting again", r.pos, attached-attachedBefore, requeued)
			}
		})
	}
}

// TestReaderWaitsForItsFastestMember: a reader whose buffer holds 40 messages reads 1,000
// for one member that stops now and then: the member never falls off (the reader waits
// for it), and one read serves it all.
func TestReaderWaitsForItsFastestMember(t *testing.T) {
	l := newFakeLog(1000)
	p, c, _ := newPool(t, l, newEdge(900), Config[message.Message]{BufferBytes: 40 * (100 + 200)})
	r := drain(p.Resume(-1), -1, func(n int) {
		if n%50 == 0 {
			time.Sleep(time.Millisecond) // the client's socket is full for a moment
		}
	})
	checkCaughtUp(t, l, r, 900)
	if attached, requeued, _, _ := c.get(); attached != 1 || len(requeued) != 0 {
		t.Errorf("readers attached %d, requeued %v; want 1 read, none requeued", attached, requeued)
	}
}

// TestMemberClosesMidReplay closes one member of three after ten messages: the others go
// on to the edge; and when every member of a group leaves, its reader stops, even on a
// log that would make it wait for more.
func TestMemberClosesMidReplay(t *testing.T) {
	l := newFakeLog(500)
	p, _, _ := newPool(t, l, newEdge(400), Config[message.Message]{})
	ms := []*Member[message.Message]{p.Resume(-1), p.Resume(5), p.Resume(10)}
	results := make([]result, 3)
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() {
			if i != 0 {
				results[i] = drain(m, m.pos, nil)
				return
			}
			for range 10 {
				if _, err := m.Next(context.Background()); err != nil {
					results[i].err = err
					return
				}
			}
			m.Close()
			_, results[i].err = m.Next(context.Background())
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	within(t, "members", done)
	if !errors.Is(results[0].err, ErrClosed) {
		t.Errorf("the closed member: Next = %v, want ErrClosed", results[0].err)
	}
	for _, r := range results[1:] {
		checkCaughtUp(t, l, r, 400)
	}

	// Every member leaves a reader that waits at the end of a stream for more.
	stream := newFakeLog(50)
	stream.stream = true
	p2, _, _ := newPool(t, stream, newEdge(noEdge), Config[message.Message]{})
	a, b := p2.Resume(-1), p2.Resume(-1)
	for _, m := range []*Member[message.Message]{a, b} {
		for range 3 {
			if _, err := m.Next(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := a.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Next with a cancelled context = %v, want context.Canceled", err)
	}
	b.Close()
	deadline := time.Now().Add(10 * time.Second)
	for stream.running.Load() > 0 || p2.Stats() != (Stats{}) {
		if time.Now().After(deadline) {
			t.Fatalf("the reader still runs with no member: %d reads running, %+v", stream.running.Load(), p2.Stats())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRetentionCutsTheLogUnderAReader: the log's oldest messages are cut while a group
// reads them (the read jumps past the cut): members below the cut are reset, a member
// whose since is past it goes on; a since already cut before any read is reset, a since
// of -1 never is; and offsets that skip numbers are not mistaken for a cut.
func TestRetentionCutsTheLogUnderAReader(t *testing.T) {
	l := newFakeLog(1000)
	cutOnce := sync.Once{}
	l.onMessage = func(off int64) {
		if off >= 100 {
			cutOnce.Do(func() { l.retainFrom(600) }) // the read goes on at 600
		}
	}
	l.gate = make(chan struct{}) // the read waits until all three are in
	p, c, _ := newPool(t, l, newEdge(900), Config[message.Message]{Window: 1000})
	sinces := []int64{10, 500, 700}
	ms := make([]*Member[message.Message], len(sinces))
	for i, s := range sinces {
		ms[i] = p.Resume(s) // one group: all within the window of 10
	}
	close(l.gate)
	results := make([]result, len(sinces))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() { results[i] = drain(m, sinces[i], nil) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	within(t, "members", done)
	for _, r := range results[:2] {
		if !errors.Is(r.err, ErrReset) || !strings.Contains(r.err.Error(), "retention") {
			t.Errorf("member since %d (below the cut): %v, want ErrReset for retention", r.since, r.err)
		}
	}
	checkCaughtUp(t, l, results[2], 900)
	if l.reads.Load() != 1 {
		_, requeued, _, _ := c.get()
		t.Errorf("%d reads (after %v), requeued %v; want 1 read", l.reads.Load(), l.sinces, requeued)
	}

	// Before any read: since 5 is cut (the log starts at 600 now), since -1 is not.
	all, old := p.Resume(-1), p.Resume(5)
	if r := drain(old, 5, nil); !errors.Is(r.err, ErrReset) {
		t.Errorf("a since already cut: %v, want ErrReset", r.err)
	}
	r := drain(all, -1, nil)
	if !errors.Is(r.err, ErrCaughtUp) || r.got[0] != 600 {
		t.Errorf("since -1: %v, first %v; want caught up from 600", r.err, r.got[:1])
	}
}

// TestQueueIsFirstComeFirstServed holds the only reader (its read waits at a gate) while
// members with far-apart sinces arrive: they wait, counted, and get the reader in the
// order they came (not by since), each group with the waiting members within the window
// of its first.
func TestQueueIsFirstComeFirstServed(t *testing.T) {
	l := newFakeLog(30000)
	l.gate = make(chan struct{})
	p, c, _ := newPool(t, l, newEdge(29000), Config[message.Message]{Readers: 1, Window: 100})
	a := p.Resume(0)
	b, c1, d, e := p.Resume(20000), p.Resume(10000), p.Resume(20010), p.Resume(10020)
	waitFor := func(what string, want Stats, reads []int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			l.mu.Lock()
			got := slices.Clone(l.sinces)
			l.mu.Unlock()
			st := p.Stats()
			if st == want && slices.Equal(got, reads) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Stats() = %+v, reads after %v; want %+v, reads after %v", what, st, got, want, reads)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor("a reads", Stats{Waiting: 4, Readers: 1, Members: 1}, []int64{0})
	a.Close() // a's reader stops: the first in line (b, with d) gets it, not c
	waitFor("b and d read", Stats{Waiting: 2, Readers: 1, Members: 2}, []int64{0, 20000})
	b.Close()
	d.Close()
	waitFor("c and e read", Stats{Readers: 1, Members: 2}, []int64{0, 20000, 10000})
	close(l.gate)
	results := make([]result, 2)
	var wg sync.WaitGroup
	wg.Go(func() { results[0] = drain(c1, 10000, nil) })
	wg.Go(func() { results[1] = drain(e, 10020, nil) })
	wg.Wait()
	for _, r := range results {
		checkCaughtUp(t, l, r, 29000)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waited) != 5 {
		t.Errorf("Waited told %d times, want 5", len(c.waited))
	}
}

// TestLongWaitIsLogged holds the only reader for over a second while another member
// waits: the pool logs it (and tells the hook), and logs again when no one waits.
func TestLongWaitIsLogged(t *testing.T) {
	l := newFakeLog(100)
	l.gate = make(chan struct{})
	p, c, logs := newPool(t, l, newEdge(90), Config[message.Message]{Readers: 1, Window: 10})
	first, second := p.Resume(0), p.Resume(50)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "resumes are waiting for a reader") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line after a member waited over a second; logs: %s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, longWait, _ := c.get(); longWait != 1 {
		t.Errorf("LongWait hook told %d times, want 1", longWait)
	}
	close(l.gate)
	for _, r := range []result{drain(first, 0, nil), drain(second, 50, nil)} {
		checkCaughtUp(t, l, r, 90)
	}
	for !strings.Contains(logs.String(), "no longer wait") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line once the line was empty; logs: %s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("the long wait is not a warning: %s", logs.String())
	}
}

// TestSliceGivesTheReaderToTheLine: a group that does not reach the edge (memory holds
// nothing yet) keeps the only reader no longer than a slice while another member waits:
// the waiting member is served while the first one sits on its buffer; once memory
// holds something, both are caught up, each with every message once.
func TestSliceGivesTheReaderToTheLine(t *testing.T) {
	l := newFakeLog(1000)
	e := newEdge(noEdge)
	p, c, _ := newPool(t, l, e, Config[message.Message]{Readers: 1, Window: 10, Slice: 20 * time.Millisecond})
	a := p.Resume(-1)
	release := make(chan struct{})
	aDone := make(chan result, 1)
	go func() {
		aDone <- drain(a, -1, func(n int) {
			if n == 1 {
				<-release // a sits on its buffer after one message
			}
		})
	}()
	b := p.Resume(900) // outside a's window: it waits for the reader
	bFirst := make(chan struct{})
	bDone := make(chan result, 1)
	go func() {
		bDone <- drain(b, 900, func(n int) {
			if n == 1 {
				close(bFirst)
			}
		})
	}()
	within(t, "b's first message while a holds its group", bFirst)
	e.off.Store(999)
	close(release)
	for _, ch := range []chan result{aDone, bDone} {
		select {
		case r := <-ch:
			checkCaughtUp(t, l, r, 999)
		case <-time.After(30 * time.Second):
			t.Fatal("a member did not finish")
		}
	}
	if _, requeued, _, _ := c.get(); requeued["slice"] < 1 {
		t.Errorf("requeued %v, want a's group sliced", requeued)
	}
}

// TestReaderFailure: a read that fails puts its members in line again; a second failure
// for the same member resets it. A member whose since is at the edge needs no read.
func TestReaderFailure(t *testing.T) {
	l := newFakeLog(300)
	p, c, logs := newPool(t, l, newEdge(250), Config[message.Message]{})
	l.fail.Store(1)
	checkCaughtUp(t, l, drain(p.Resume(10), 10, nil), 250)
	l.fail.Store(2)
	if r := drain(p.Resume(10), 10, nil); !errors.Is(r.err, ErrReset) {
		t.Errorf("after two failed reads: %v, want ErrReset", r.err)
	}
	_, requeued, _, failed := c.get()
	if requeued["failed"] != 2 || failed != 3 || !strings.Contains(logs.String(), "reading the log failed") {
		t.Errorf("requeued %v, failures counted %d; want 2 failed, 3 counted and logged", requeued, failed)
	}
	reads := l.reads.Load()
	if r := drain(p.Resume(250), 250, nil); !errors.Is(r.err, ErrCaughtUp) || r.pos != 250 || l.reads.Load() != reads {
		t.Errorf("since at the edge: %v at %d with %d more reads; want caught up at 250, no read", r.err, r.pos, l.reads.Load()-reads)
	}
}

// TestCloseEndsEveryMember closes the pool with members reading and waiting.
func TestCloseEndsEveryMember(t *testing.T) {
	l := newFakeLog(100)
	l.stream = true
	c := &counts{}
	p, err := New(Config[message.Message]{Log: l, Edge: newEdge(noEdge).get, Prepare: prepare, Readers: 1, Window: 5, Hooks: c.hooks()})
	if err != nil {
		t.Fatal(err)
	}
	reading, waiting := p.Resume(-1), p.Resume(50)
	results := make(chan error, 2)
	for _, m := range []*Member[message.Message]{reading, waiting} {
		go func() {
			for {
				if _, err := m.Next(context.Background()); err != nil {
					results <- err
					return
				}
			}
		}()
	}
	p.Close()
	for range 2 {
		if err := <-results; !errors.Is(err, ErrClosed) {
			t.Errorf("after Close: %v, want ErrClosed", err)
		}
	}
	if _, err := New(Config[message.Message]{Log: l}); err == nil {
		t.Error("New without Edge and Prepare: no error")
	}
}
