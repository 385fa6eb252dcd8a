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
