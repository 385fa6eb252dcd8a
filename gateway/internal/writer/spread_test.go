package writer

import (
	"bytes"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/wire"
)

// idlePool is a pool of a home worker and helpers whose goroutines are not started, so
// that a test sees what each would take and whom the home worker would wake.
func idlePool(helpers int, spreadAfter time.Duration) *pool {
	p := &pool{home: newWorker(), spreadAfter: spreadAfter, perWrite: initialPerWrite}
	for range helpers {
		p.helpers = append(p.helpers, newWorker())
	}
	return p
}

func dummyQueues(n int) []*Queue {
	qs := make([]*Queue, n)
	for i := range qs {
		qs[i] = &Queue{}
	}
	return qs
}

// TestSpreadPolicy: the home worker wakes no helper while the backlog would take it at
// most spreadAfter at its measured time per write, and one helper per spreadAfter of a
// deeper one, up to all; it learns its time per write from chunks long enough to tell.
func TestSpreadPolicy(t *testing.T) {
	p := idlePool(3, 20*time.Millisecond) // 10us a write to start with
	for _, c := range []struct{ left, want int }{
		{0, 0}, {1, 0}, {2000, 0}, // 20ms: not more than the target
		{2001, 1}, {3999, 1}, {4000, 2}, {6000, 3}, {100000, 3},
	} {
		if got := p.helpersFor(c.left); got != c.want {
			t.Errorf("a backlog of %d at 10us a write, spreadAfter 20ms: %d helpers woken, want %d", c.left, got, c.want)
		}
	}
	if got := idlePool(0, 0).helpersFor(100000); got != 0 {
		t.Errorf("no helpers: %d woken", got)
	}
	if got := idlePool(2, 0).helpersFor(1); got != 2 {
		t.Errorf("spreadAfter 0, a backlog of 1: %d helpers woken, want 2", got)
	}

	// Chunks of 64 writes at 1ms each: perWrite moves there, and 21 queues (21ms) are then a
	// deep backlog. Short chunks teach nothing.
	for range 100 {
		p.learn(chunkSize, chunkSize*time.Millisecond)
	}
	if p.perWrite < 990*time.Microsecond || p.perWrite > time.Millisecond {
		t.Fatalf("after chunks at 1ms a write, perWrite is %v", p.perWrite)
	}
	before := p.perWrite
	p.learn(minMeasuredChunk-1, time.Second)
	if p.perWrite != before {
		t.Fatalf("a chunk of %d writes moved perWrite from %v to %v", minMeasuredChunk-1, before, p.perWrite)
	}
	if got := p.helpersFor(21); got != 1 {
		t.Fatalf("21 queues at ~1ms a write: %d helpers woken, want 1", got)
	}
}

// TestReadyListIsFirstInFirstOut: workers take the ready list from its front, a chunk
// at a time, in the order queues joined it, each queue once, whoever takes; the list lets
// go of what was taken, and one that never empties does not grow for good.
func TestReadyListIsFirstInFirstOut(t *testing.T) {
	p := idlePool(1, 0)
	qs := dummyQueues(200)
	for _, q := range qs[:150] {
		p.submit(q)
	}
	if len(p.home.wake) != 1 {
		t.Fatal("the first queue did not wake the home worker")
	}
	var got []*Queue
	for i, w := range []*worker{p.home, p.helpers[0], p.home} {
		left := p.take(w)
		if want := []int{86, 22, 8}[i]; left != want { // 150 - 64, - 64; + 50 - 64
			t.Fatalf("take %d left %d, want %d", i, left, want)
		}
		got = append(got, w.chunk...)
		if i == 1 {
			for _, q := range qs[150:] {
				p.submit(q) // joins behind what is left
			}
		}
	}
	got = append(got, takeAll(p, p.home)...)
	for i := range qs {
		if got[i] != qs[i] {
			t.Fatalf("queue %d was not taken in its place", i)
		}
	}
	if len(got) != len(qs) || p.head != 0 || len(p.ready) != 0 {
		t.Fatalf("took %d of %d; list left at head %d, len %d", len(got), len(qs), p.head, len(p.ready))
	}
	for _, q := range p.ready[:cap(p.ready)] {
		if q != nil {
			t.Fatal("the list still holds a queue it gave a worker")
		}
	}

	// A list that never empties: 64 taken, 64 joining, 10,000 times.
	p = idlePool(0, 0)
	for _, q := range dummyQueues(5000) {
		p.submit(q)
	}
	for range 10000 {
		p.take(p.home)
		for _, q := range dummyQueues(chunkSize) {
			p.submit(q)
		}
	}
	if cap(p.ready) > 4*8192 {
		t.Fatalf("a list of 5,000 that never emptied grew to a capacity of %d", cap(p.ready))
	}
}

func takeAll(p *pool, w *worker) []*Queue {
	var all []*Queue
	for p.take(w); len(w.chunk) > 0; p.take(w) {
		all = append(all, w.chunk...)
	}
	return all
}

// TestSpreadWritesEveryFrameOnceInOrder: with every backlog shared among three workers, a
// queue moves between workers from one frame to the next; each of 300 clients still
// receives each of its 20 frames once, in order, and the shares are counted.
func TestSpreadWritesEveryFrameOnceInOrder(t *testing.T) {
	reg := prometheus.NewRegistry()
	w := New(Config{QueueBytes: 1 << 20, FlushInterval: -1, Workers: 3, SpreadAfter: -1,
		Metrics: metrics.New(reg, metrics.Series{})})
	defer w.Close()
	const conns, frames = 300, 20
	type conn struct {
		q    *Queue
		peer io.Reader
	}
	cs := make([]conn, conns)
	for i := range cs {
		q, _, peer := newQueue(t, w, wire.Encoding{})
		if !q.sock.Direct() {
			t.Skip("no non-blocking writes on this platform")
		}
		cs[i] = conn{q, peer}
	}
	var want []byte
	for off := range int64(frames) {
		f := benchFrame(off + 1)
		want = append(want, wire.Encoding{}.Bytes(f)...)
		for _, c := range cs {
			c.q.Enqueue(f)
		}
	}
	for i, c := range cs {
		got := make([]byte, len(want))
		c.peer.(interface{ SetReadDeadline(time.Time) error }).SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c.peer, got); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("client %d did not receive its %d frames once each, in order", i, frames)
		}
	}
	for _, c := range cs {
		c.q.RequestClose(1000, "", true)
		c.q.Finish()
	}
	if counterValue(t, reg, "herald_write_spread_queues_total") == 0 {
		t.Fatal("no queue was handed to another worker")
	}
}

// counterValue is the value of the counter named name in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestWorkClockCountsOnlyTheThreadsWork: the home worker's clock advances while its
// thread works, and not while it sleeps (on Linux, where it is the thread's CPU time): a
// core taken by other work does not make writes look slower.
func TestWorkClockCountsOnlyTheThreadsWork(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the wall clock elsewhere")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c0, ok := workClock()
	if !ok {
		t.Fatal("no thread CPU clock")
	}
	time.Sleep(100 * time.Millisecond)
	c1, _ := workClock()
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	c2, _ := workClock()
	if slept := c1 - c0; slept > 20*time.Millisecond {
		t.Errorf("100ms asleep counted %v", slept)
	}
	if worked := c2 - c1; worked <= time.Millisecond || worked > 60*time.Millisecond {
		t.Errorf("50ms of work counted %v", worked)
	}
}
