package consumer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// Helpers shared by the tests of the Stream and of the PresenceLink.

// testLogger sends a consumer's logs to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testRun runs run (a Stream's or a PresenceLink's Run) in a goroutine until the test
// ends; stop cancels its context and returns its result once it has returned, failing
// the test if it takes longer than 10s. done is closed when run returns.
func testRun(t *testing.T, run func(context.Context) error) (stop func() error, done <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	result, finished := make(chan error, 1), make(chan struct{})
	go func() {
		result <- run(ctx)
		close(finished)
	}()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-result:
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return within 10s of its context being cancelled")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop, finished
}

// testUniqueName returns prefix followed by 12 random hex digits: a connection name the
// test can find the connection by.
func testUniqueName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// testStates records OnStateChange calls, from any goroutine. mu protects states;
// changed gets a signal (without blocking) after each call.
type testStates struct {
	mu      sync.Mutex
	states  []bool
	changed chan struct{}
}

func newTestStates() *testStates { return &testStates{changed: make(chan struct{}, 1)} }

func (s *testStates) record(connected bool) {
	s.mu.Lock()
	s.states = append(s.states, connected)
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func (s *testStates) get() []bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]bool(nil), s.states...)
}

// waitFor waits until n state changes are recorded and returns them; it fails the test
// when ctx ends first.
func (s *testStates) waitFor(ctx context.Context, t *testing.T, n int) []bool {
	t.Helper()
	for {
		if got := s.get(); len(got) >= n {
			return got
		}
		select {
		case <-s.changed:
		case <-ctx.Done():
			t.Fatalf("state changes before the deadline: got %v, want %d of them", s.get(), n)
		}
	}
}

func TestBackoff(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, time.Second
	for n, ceil := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		ceil *= time.Millisecond
		for range 100 {
			if d := backoff(n, lo, hi); d < 0 || d > ceil {
				t.Fatalf("backoff(%d): got %v, want within [0, %v]", n, d, ceil)
			}
		}
	}
	if d := backoff(200, lo, hi); d < 0 || d > hi {
		t.Errorf("backoff(200): got %v, want within [0, %v]", d, hi)
	}
	if d := backoff(3, 0, 0); d != 0 {
		t.Errorf("backoff(3) with no delays: got %v, want 0", d)
	}
}

func TestReconnectDefaults(t *testing.T) {
	for _, tt := range []struct {
		lo, hi, wantLo, wantHi time.Duration
	}{
		{0, 0, 100 * time.Millisecond, 10 * time.Second},
		{time.Second, 0, time.Second, 10 * time.Second},
		{0, time.Minute, 100 * time.Millisecond, time.Minute},
		{time.Minute, time.Second, time.Minute, time.Minute}, // the maximum raised to the minimum
	} {
		if lo, hi := reconnectDefaults(tt.lo, tt.hi); lo != tt.wantLo || hi != tt.wantHi {
			t.Errorf("reconnectDefaults(%v, %v): got %v, %v; want %v, %v", tt.lo, tt.hi, lo, hi, tt.wantLo, tt.wantHi)
		}
	}
}
