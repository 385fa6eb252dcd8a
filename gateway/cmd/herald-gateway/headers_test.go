package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/producer/amqptest"
)

// TestProbeHeadersReports: where the probe finds that the broker drops array and table
// headers, the gateway says so in an error in its log that tells how to publish users, in
// herald_bus_headers_kept and in /readyz's detail; a failed attempt is logged, counted and
// tried again.
func TestProbeHeadersReports(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := gateway.NewMetrics(reg)
	var logs bytes.Buffer // written by probeHeaders on this goroutine
	log := slog.New(slog.NewTextHandler(&logs, nil))
	r := newHeaderReport()
	if d := r.detail().(map[string]any)["headers"].(map[string]any); d["probe"] != "pending" {
		t.Errorf("detail before the probe: got %v, want pending", d)
	}
	calls := 0
	probe := func(ctx context.Context) (consumer.HeaderSupport, error) {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("probe attempt without a deadline")
		}
		if calls++; calls == 1 {
			return consumer.HeaderSupport{}, errors.New("broker busy")
		}
		return consumer.HeaderSupport{Stream: "s.probe.1"}, nil // drops both
	}
	probeHeaders(context.Background(), probe, log, metrics, r)

	if calls != 2 {
		t.Errorf("probe attempts: got %d, want 2 (one failed, one answered)", calls)
	}
	out := logs.String()
	for _, want := range []string{"level=WARN msg=\"header probe failed", "level=ERROR", "string holding a JSON array", `users: '[\"alice\",\"bob\"]'`} {
		if !strings.Contains(out, want) {
			t.Errorf("log: %q missing from\n%s", want, out)
		}
	}
	want := `
# HELP herald_bus_header_probes_total Probes of what the broker keeps of array and table headers in a stream, by result: ok, failed (retried with backoff).
# TYPE herald_bus_header_probes_total counter
herald_bus_header_probes_total{result="failed"} 1
herald_bus_header_probes_total{result="ok"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "herald_bus_header_probes_total"); err != nil {
		t.Error(err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP herald_bus_headers_kept 1 when the broker keeps header values of this kind (array, table) through a stream, 0 when it drops them (RabbitMQ 3.10 drops both: publish users as a string holding a JSON array); absent until the gateway's probe at start has answered, and on the embedded bus.
# TYPE herald_bus_headers_kept gauge
herald_bus_headers_kept{kind="array"} 0
herald_bus_headers_kept{kind="table"} 0
`), "herald_bus_headers_kept"); err != nil {
		t.Error(err)
	}
	b, _ := json.Marshal(r.detail())
	var d struct {
		Headers  map[string]string
		Warnings []string
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.Headers["probe"] != "done" || d.Headers["arrays"] != "dropped" || d.Headers["tables"] != "dropped" ||
		len(d.Warnings) != 2 || !strings.Contains(d.Warnings[0], "string holding a JSON array") {
		t.Errorf("detail: got %s, want both kinds dropped, with the warnings", b)
	}

	// A probe that keeps failing stops when the gateway does.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		probeHeaders(ctx, func(context.Context) (consumer.HeaderSupport, error) {
			return consumer.HeaderSupport{}, errors.New("down")
		}, slog.New(slog.DiscardHandler), metrics, newHeaderReport())
		close(done)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("probeHeaders did not return after its context ended")
	}
}

// TestHeaderProbeOnRabbitMQ: a gateway on the real broker reports what the broker does to
// array and table headers in a stream, as the test finds it directly (RabbitMQ 3.10 drops
// both), in /readyz (which stays ready: a warning, not an outage) and its metrics, and
// leaves no probe stream behind.
func TestHeaderProbeOnRabbitMQ(t *testing.T) {
	url := amqptest.URL(t)
	arrays, tables, version := amqptest.StreamKeepsHeaders(t, url)
	exchange, stream := amqptest.Names(t, url)
	a := startGateway(t, "gw-a", url, exchange, stream)

	var ready struct {
		Status string
		Bus    struct {
			Headers  map[string]string
			Warnings []string
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(a.url("/readyz"))
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&ready)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || ready.Status != "ready" {
			t.Fatalf("/readyz: %d %+v (%v), want 200 ready whatever the probe finds", resp.StatusCode, ready, err)
		}
		if ready.Bus.Headers["probe"] == "done" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz: the header probe has not answered: %+v", ready.Bus)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("RabbitMQ %s keeps arrays %v, tables %v; the gateway says %v, warnings %q", version, arrays, tables, ready.Bus.Headers, ready.Bus.Warnings)
	word := map[bool]string{true: "kept", false: "dropped"}
	if ready.Bus.Headers["arrays"] != word[arrays] || ready.Bus.Headers["tables"] != word[tables] {
		t.Errorf("/readyz headers: got %v, want arrays %s, tables %s (what the broker does)", ready.Bus.Headers, word[arrays], word[tables])
	}
	if (len(ready.Bus.Warnings) > 0) != (!arrays || !tables) {
		t.Errorf("/readyz warnings: got %q, want some exactly where the broker drops a kind", ready.Bus.Warnings)
	}
	gauge := map[bool]float64{true: 1, false: 0}
	for kind, kept := range map[string]bool{"array": arrays, "table": tables} {
		if got, ok := scrapeMetric(t, a, `herald_bus_headers_kept{kind="`+kind+`"}`); !ok || got != gauge[kept] {
			t.Errorf("herald_bus_headers_kept{kind=%q}: got %v (exported %v), want %v", kind, got, ok, gauge[kept])
		}
	}
	if got, _ := scrapeMetric(t, a, `herald_bus_header_probes_total{result="ok"}`); got != 1 {
		t.Errorf(`herald_bus_header_probes_total{result="ok"}: got %v, want 1`, got)
	}
	probe := ready.Bus.Headers["probe_stream"]
	if !strings.HasPrefix(probe, stream+".probe.") {
		t.Errorf("probe stream %q: want one of its own, named after %s", probe, stream)
	} else if amqptest.QueueExists(t, url, probe) {
		t.Errorf("probe stream %s still exists", probe)
		_, _ = amqptest.Channel(t, url).QueueDelete(probe, false, false, false)
	}
}
