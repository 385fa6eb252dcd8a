package logsample

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer safe for the Sampler's timer goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		_ = json.Unmarshal([]byte(line), &m)
		out = append(out, m)
	}
	return out
}

func TestSamplerBoundsEachReasonAndReports(t *testing.T) {
	var buf lockedBuffer
	s := New(slog.New(slog.NewJSONHandler(&buf, nil)), Config{PerSecond: 0.001, Burst: 3, Report: 100 * time.Millisecond})
	for i := 0; i < 1000; i++ {
		s.Log(slog.LevelInfo, "origin", "refused", "i", i)
	}
	s.Log(slog.LevelInfo, "token", "refused")
	s.Log(slog.LevelDebug, "debug", "not enabled") // below the handler's level: not counted either
	deadline := time.Now().Add(5 * time.Second)
	for len(buf.lines()) < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	lines := buf.lines()
	if len(lines) != 5 {
		t.Fatalf("got %d lines, want 3 origin, 1 token, 1 report: %v", len(lines), lines)
	}
	count := map[string]int{}
	for _, l := range lines[:4] {
		count[l["reason"].(string)]++
	}
	if count["origin"] != 3 || count["token"] != 1 {
		t.Errorf("lines by reason: got %v, want origin 3, token 1", count)
	}
	if r := lines[4]; r["msg"] != "log lines suppressed" || r["reason"] != "origin" || r["suppressed"] != float64(997) {
		t.Errorf("report: got %v, want 997 origin lines suppressed", r)
	}
	s.Log(slog.LevelInfo, "origin", "refused")
	s.Close() // the line left out since is reported at once
	if l := buf.lines(); len(l) != 6 || l[5]["suppressed"] != float64(1) {
		t.Errorf("after Close: got %v, want a report of 1", l[len(l)-1])
	}
}

func TestClip(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes
	tests := []struct{ in, want string }{
		{"", ""},
		{"https://app.example.com", "https://app.example.com"},
		{strings.Repeat("a", MaxClip), strings.Repeat("a", MaxClip)},
		{strings.Repeat("a", 15000), strings.Repeat("a", MaxClip) + "…(15000 bytes)"},
		{long, strings.Repeat("é", MaxClip/2) + "…(200 bytes)"},
		{"a" + long, "a" + strings.Repeat("é", MaxClip/2-1) + "…(201 bytes)"}, // cut before a split character
	}
	for _, tt := range tests {
		if got := Clip(tt.in).LogValue().String(); got != tt.want {
			t.Errorf("Clip(%d bytes): got %q, want %q", len(tt.in), got, tt.want)
		}
	}
	if got := ClipErr(nil).LogValue().String(); got != "" {
		t.Errorf("ClipErr(nil): got %q", got)
	}
}
