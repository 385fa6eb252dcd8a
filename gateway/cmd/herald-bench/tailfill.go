package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Filling the gateway's tail of the log (issue 18) before a memory baseline: the tail is
// the gateway's, not its connections', so RSS per connection is measured from a baseline
// that already holds a full tail.

// byteSize is a flag of a size in bytes: a number, optionally with KiB, MiB or GiB (or
// the gateway's own spellings: KB, MB, GB and k, m, g, all powers of 1024).
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	n, err := parseByteSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

// parseByteSize reads a size such as 16MiB, 512k or 1048576.
func parseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"kb", 1 << 10}, {"mb", 1 << 20}, {"gb", 1 << 30},
		{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"b", 1}} {
		if len(t) > len(u.suffix) && strings.EqualFold(t[len(t)-len(u.suffix):], u.suffix) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a number of bytes, optionally with KiB, MiB or GiB", s)
	}
	return n * mult, nil
}

// scrapeMetrics reads the gateway's Prometheus text at url and returns each metric's
// value by name, the series of a labelled metric summed, and each labelled series by
// itself too, as written (name{label="value"}); nil when it cannot be read.
func scrapeMetrics(url string) map[string]float64 {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '{'); i >= 0 && i < len(name) {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			series := line[:j+1]
			name, rest, ok = line[:i], strings.TrimSpace(line[j+1:]), true
			if f, err := strconv.ParseFloat(strings.Fields(rest + " x")[0], 64); err == nil {
				out[series] = f
			}
		}
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.Fields(rest + " x")[0], 64); err == nil {
			out[name] += f
		}
	}
	return out
}

// tailState is the gateway's tail of the log as its /metrics shows it.
type tailState struct {
	Bytes    int64   `json:"bytes"`
	Messages int64   `json:"messages"`
	Edge     int64   `json:"edge_offset"`
	AgeSecs  float64 `json:"age_seconds"`
}

func readTail(metricsURL string) (tailState, error) {
	m := scrapeMetrics(metricsURL)
	if m == nil {
		return tailState{}, fmt.Errorf("no metrics at %s (with --admin-addr the gateway serves them there only: give -metrics-url)", metricsURL)
	}
	if _, ok := m["herald_tail_bytes"]; !ok {
		return tailState{}, fmt.Errorf("%s has no herald_tail_bytes: a gateway without the tail of the log", metricsURL)
	}
	return tailState{Bytes: int64(m["herald_tail_bytes"]), Messages: int64(m["herald_tail_messages"]),
		Edge: int64(m["herald_tail_edge_offset"]), AgeSecs: m["herald_tail_age_seconds"]}, nil
}

// tailFill is how to fill a gateway's tail: publish messages of DataBytes to Channel
// through POST /api/publish at Target, Conns at once, until herald_tail_bytes (at
// MetricsURL) is within two messages of Bytes, the cap the gateway was started with
// (--tail-bytes; with the embedded bus, --retain-bytes).
type tailFill struct {
	Target     string
	MetricsURL string
	APIKey     string
	Channel    string
	Bytes      int64
	DataBytes  int
	Conns      int
	// Batch is how many messages are published between two looks at the tail.
	Batch int
}

// fillTail publishes until the tail is full and returns it as /metrics shows it then. It
// fails when the tail stops growing below the cap (another bound holds it: the embedded
// bus's --retain-messages, or --tail-age), or a publish fails.
func fillTail(ctx context.Context, f tailFill, stderr io.Writer) (tailState, error) {
	if f.Batch <= 0 {
		f.Batch = 2000
	}
	p := newHTTPPublisher(publisherConfig{Kind: "http", Target: f.Target, Channel: f.Channel, APIKey: f.APIKey, Conns: f.Conns})
	defer p.close()
	st, err := readTail(f.MetricsURL)
	if err != nil {
		return st, err
	}
	start := time.Now()
	var seq atomic.Int64
	for {
		if full(st, f.Bytes) {
			fmt.Fprintf(stderr, "tail full: %d bytes (goal %d), %d messages, after %d published in %.1fs\n",
				st.Bytes, f.Bytes, st.Messages, seq.Load(), time.Since(start).Seconds())
			return st, nil
		}
		// Publish a batch: enough to fill what is left, at most Batch; a few first, to
		// learn what a message takes in the tail.
		n := 16
		if st.Messages > 0 {
			per := st.Bytes / st.Messages
			n = min(f.Batch, int((f.Bytes-st.Bytes)/per)+1)
		}
		if err := publishBatch(ctx, p, n, max(f.Conns, 1), f.DataBytes, &seq); err != nil {
			return st, fmt.Errorf("filling the tail: %w", err)
		}
		// Wait until the gateway has consumed what the bus took: the tail's count stops
		// moving.
		prev := st
		for i := 0; ; i++ {
			time.Sleep(100 * time.Millisecond)
			cur, err := readTail(f.MetricsURL)
			if err != nil {
				return st, err
			}
			settled := cur.Messages == st.Messages && cur.Bytes == st.Bytes
			st = cur
			if settled && i > 0 || i >= 100 || ctx.Err() != nil {
				break
			}
		}
		if err := ctx.Err(); err != nil {
			return st, err
		}
		fmt.Fprintf(stderr, "  tail %d of %d bytes, %d messages\n", st.Bytes, f.Bytes, st.Messages)
		if st.Bytes <= prev.Bytes && !full(st, f.Bytes) {
			return st, fmt.Errorf("the tail stopped at %d bytes (%d messages), short of %d: another bound holds it (the embedded bus's --retain-messages, --tail-age) or -fill-tail is above the gateway's cap", st.Bytes, st.Messages, f.Bytes)
		}
	}
}

// full reports whether the tail is within two messages of cap: evicting to take more.
func full(st tailState, cap int64) bool {
	if st.Messages == 0 {
		return cap == 0
	}
	return st.Bytes+2*(st.Bytes/st.Messages) >= cap
}

// publishBatch publishes n messages with conns publishes at once, as fast as the
// gateway takes them.
func publishBatch(ctx context.Context, p publisher, n, conns, size int, seq *atomic.Int64) error {
	var (
		wg    sync.WaitGroup
		left  atomic.Int64
		errMu sync.Mutex
		first error
	)
	left.Store(int64(n))
	for range conns {
		wg.Go(func() {
			buf := make([]byte, 0, size+64)
			for left.Add(-1) >= 0 && ctx.Err() == nil {
				buf = payload(buf, seq.Add(1), time.Now(), size, false)
				if err := p.publish(ctx, buf); err != nil {
					errMu.Lock()
					first = cmpOr(first, err)
					errMu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(first, ctx.Err())
}

// cmpOr returns a unless it is nil, else b.
func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// goMem is the gateway's Go memory as its /metrics shows it (the Go collector's
// go_memstats), in KiB: the heap in use, the heap free but not yet returned to the
// system (still in RSS, and what new allocations take first), and the goroutine stacks.
type goMem struct {
	HeapInuseKiB  int64 `json:"heap_inuse_kib"`
	HeapFreeKiB   int64 `json:"heap_free_unreleased_kib"`
	StackInuseKiB int64 `json:"stack_inuse_kib"`
}

// tailAndMem reads the tail and the Go memory from the gateway's /metrics.
func tailAndMem(metricsURL string) (*tailState, *goMem, error) {
	m := scrapeMetrics(metricsURL)
	if m == nil {
		return nil, nil, fmt.Errorf("no metrics at %s", metricsURL)
	}
	st := tailState{Bytes: int64(m["herald_tail_bytes"]), Messages: int64(m["herald_tail_messages"]),
		Edge: int64(m["herald_tail_edge_offset"]), AgeSecs: m["herald_tail_age_seconds"]}
	gm := goMem{HeapInuseKiB: int64(m["go_memstats_heap_inuse_bytes"]) >> 10,
		HeapFreeKiB:   int64(m["go_memstats_heap_idle_bytes"]-m["go_memstats_heap_released_bytes"]) >> 10,
		StackInuseKiB: int64(m["go_memstats_stack_inuse_bytes"]) >> 10}
	return &st, &gm, nil
}
