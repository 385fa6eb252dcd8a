package main

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The attacks of issue 15, section 1, re-run as bounded tests against the gateway as
// main builds it.

// TestOriginFloodRateLimitedWithBoundedLog: 3,000 handshakes with a 15 KB Origin from
// one address are answered 429 past the handshake burst (the rate limit comes before
// the origin check), and the log holds a bounded number of bytes: a few sampled lines,
// each with a bounded prefix of the origin, and a count of those left out.
func TestOriginFloodRateLimitedWithBoundedLog(t *testing.T) {
	addr, logs := runGateway(t, "--handshake-rate", "20", "--handshake-burst", "100")
	origin := "https://" + strings.Repeat("a", 15000) + ".example.com"
	before := logs.bytes()
	const total, workers = 3000, 8
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var forbidden, limited, other atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	next := atomic.Int64{}
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= total {
				req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/ws", nil)
				req.Header.Set("Origin", origin)
				req.Header.Set("Connection", "Upgrade")
				req.Header.Set("Upgrade", "websocket")
				req.Header.Set("Sec-WebSocket-Version", "13")
				req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
				resp, err := client.Do(req)
				if err != nil {
					other.Add(1)
					continue
				}
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusForbidden:
					forbidden.Add(1)
				case http.StatusTooManyRequests:
					limited.Add(1)
				default:
					other.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	// At most the burst and what the rate refilled meanwhile reach the origin check.
	maxPassed := 100 + int64(20*elapsed.Seconds()) + 1
	if other.Load() != 0 || forbidden.Load() > maxPassed || forbidden.Load()+limited.Load() != total {
		t.Errorf("in %v: %d answered 403, %d 429, %d otherwise; want at most %d 403 and the rest 429",
			elapsed, forbidden.Load(), limited.Load(), other.Load(), maxPassed)
	}
	// The bound: 10 lines at once and 1 a second (each under 400 bytes with the clipped
	// origin), and the reports, in all a few KiB (before: 44 MB in 1.7s).
	time.Sleep(100 * time.Millisecond) // the last lines reach the buffer
	logged := logs.bytes() - before
	if bound := 400 * (12 + int(elapsed.Seconds())); logged > bound {
		t.Errorf("the flood wrote %d bytes of log in %v, want at most %d", logged, elapsed, bound)
	}
	if strings.Contains(logs.String(), strings.Repeat("a", 100)) {
		t.Error("a log line holds more than a bounded prefix of the origin")
	}
	t.Logf("%d handshakes in %v: %d answered 403, %d 429; %d bytes of log", total, elapsed, forbidden.Load(), limited.Load(), logged)
}
