package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"sync"
	"testing"
)

// lockedBuffer is a bytes.Buffer that two goroutines may write.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestMain lets the test binary be floor's reading child process and a scenario's worker
// process too: they start their own executable again with floorReaderCmd or
// fleetWorkerCmd. Otherwise it builds herald-gateway for the scenarios' tests.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == floorReaderCmd || os.Args[1] == fleetWorkerCmd) {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(runTests(m))
}

// TestFloorReaders measures a small floor with each reader: every write is counted, as
// many frames as writes times frames per write, and both the writer and the reading child
// spent CPU on them (the child read what was written).
func TestFloorReaders(t *testing.T) {
	for _, reader := range []string{"epoll", "goroutine"} {
		t.Run(reader, func(t *testing.T) {
			var out bytes.Buffer
			var errOut lockedBuffer // the reading child's stderr is copied into it too
			err := floorCmd(context.Background(), []string{"-sockets", "20", "-batch", "1,4", "-duration", "300ms",
				"-frames-per-sec", "20000", "-quiet-below", "0", "-reader", reader, "-json"}, &out, &errOut)
			if err != nil {
				t.Fatalf("floor: %v\n%s", err, errOut.String())
			}
			var rs []FloorResult
			if err := json.Unmarshal(out.Bytes(), &rs); err != nil {
				t.Fatalf("floor -json: %v\n%s", err, out.String())
			}
			if len(rs) != 2 {
				t.Fatalf("got %d results, want 2 (batches 1 and 4): %s", len(rs), out.String())
			}
			for i, r := range rs {
				if r.Reader != reader || r.Sockets != 20 || r.FramesPerWrite != []int{1, 4}[i] {
					t.Errorf("result %d: %+v", i, r)
				}
				if r.Writes == 0 || r.Frames != r.Writes*int64(r.FramesPerWrite) {
					t.Errorf("result %d: %d writes, %d frames", i, r.Writes, r.Frames)
				}
				if r.WriterCPUUS <= 0 || r.ReaderCPUUS <= 0 {
					t.Errorf("result %d: writer %.2f us, reader %.2f us per frame; want both above 0", i, r.WriterCPUUS, r.ReaderCPUUS)
				}
			}
		})
	}
	var errOut bytes.Buffer
	if err := floorCmd(context.Background(), []string{"-reader", "select"}, &bytes.Buffer{}, &errOut); err != errUsage {
		t.Errorf("-reader select: %v, want a usage error", err)
	}
}
