package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestBreakdownFromDispatches: the traces read from a gateway's /debug/dispatches give,
// for the messages dispatched within the window and written to someone, the p99 of each
// segment; compare prints one line per regime with the medians over the rounds.
func TestBreakdownFromDispatches(t *testing.T) {
	from := time.Unix(1000, 0)
	var traces []map[string]any
	add := func(at time.Time, recipients int, busHub, enqueue, write time.Duration) {
		d := at.UnixNano()
		written := d + int64(enqueue+write)
		if write < 0 {
			written = 0 // not written yet
		}
		traces = append(traces, map[string]any{"id": "x", "offset": len(traces), "recipients": recipients,
			"published_ns": d - int64(busHub), "dispatched_ns": d, "enqueued_ns": d + int64(enqueue), "written_ns": written})
	}
	// 200 messages in the window, message i's segments i us, 10i us and 100i us: the p99
	// (nearest rank: the 198th value) is message 197's, 197 us, 1.97 ms and 19.7 ms.
	for i := range 200 {
		add(from.Add(time.Duration(i)*time.Millisecond), 10, time.Duration(i)*time.Microsecond,
			time.Duration(i)*10*time.Microsecond, time.Duration(i)*100*time.Microsecond)
	}
	add(from.Add(-time.Millisecond), 10, time.Hour, time.Hour, time.Hour)   // before the window
	add(from.Add(time.Hour), 10, time.Hour, time.Hour, time.Hour)           // after it
	add(from.Add(time.Millisecond), 0, time.Hour, time.Hour, time.Hour)     // to nobody
	add(from.Add(time.Millisecond), 10, time.Hour, time.Hour, -time.Second) // not written
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/dispatches" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"dispatches": traces})
	}))
	defer srv.Close()

	got, err := fetchDispatches(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b := breakdown(got, from, from.Add(time.Minute), 3.5)
	want := Breakdown{Messages: 200, PublishP99Ms: 3.5, BusHubP99Ms: 0.197, EnqueueP99Ms: 1.97, WriteP99Ms: 19.7, HubWriteP99Ms: 21.67}
	if b != want {
		t.Errorf("breakdown:\n got %+v\nwant %+v", b, want)
	}

	sum := &compareSummary{Figures: map[string]map[string][]float64{}}
	sum.add("C: p99 (ms)", sysHerald, 120)
	sum.addBreakdown("C", sysHerald, b)
	b2 := b
	b2.WriteP99Ms = 40
	sum.addBreakdown("C", sysHerald, b2)
	b3 := b
	b3.WriteP99Ms = 10
	sum.addBreakdown("C", sysHerald, b3)
	var out strings.Builder
	sum.print(&out)
	line := "  C, herald: publish->bus 3.50 | bus->hub 0.20 | hub->last enqueue 1.97 | last enqueue->last write 19.7 ms (hub->last write 21.7 ms; p99 of each, 200 messages)\n"
	if !strings.Contains(out.String(), line) {
		t.Errorf("compare's report lacks the breakdown line (the medians)\n%s\ngot:\n%s", line, out.String())
	}
	if strings.Count(out.String(), "C, ") != 1 {
		t.Errorf("want one breakdown line for regime C:\n%s", out.String())
	}

	if _, err := fetchDispatches(srv.URL + "/nothing"); err == nil {
		t.Error("a gateway without /debug/dispatches: no error")
	}
}
