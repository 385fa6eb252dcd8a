package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
)

// The header probe's limits: each attempt is bounded, and a failed one is tried again
// after a delay that doubles up to headerProbeRetryMax.
const (
	headerProbeTimeout  = 10 * time.Second
	headerProbeRetryMin = time.Second
	headerProbeRetryMax = time.Minute
)

// The warnings a gateway gives where its broker drops headers of a kind in streams: in
// its log (an error) and in /readyz.
const (
	warnArrays = "the broker drops array-valued AMQP headers on their way through a stream: publish users as a " +
		`string holding a JSON array, e.g. users: '["alice","bob"]'. An AMQP array is lost, and the message then ` +
		"reaches every subscriber of its channel (or everyone)"
	warnTables = "the broker drops table-valued (nested) AMQP headers on their way through a stream: no Herald " +
		"header is a table, but a publisher's own nested headers are lost"
)

// headerReport is what the header probe has found, for /readyz. mu protects state and
// support; the probe's goroutine writes them, request goroutines read them.
type headerReport struct {
	mu      sync.Mutex
	state   string // "pending" until the first answer, "failed" while retrying, then "done"
	support consumer.HeaderSupport
}

func newHeaderReport() *headerReport { return &headerReport{state: "pending"} }

func (r *headerReport) set(state string, hs consumer.HeaderSupport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state, r.support = state, hs
}

// detail is the report as /readyz shows it under "bus".
func (r *headerReport) detail() any {
	r.mu.Lock()
	defer r.mu.Unlock()
	headers := map[string]any{"probe": r.state}
	d := map[string]any{"headers": headers}
	if r.state != "done" {
		return d
	}
	kept := func(b bool) string {
		if b {
			return "kept"
		}
		return "dropped"
	}
	headers["arrays"], headers["tables"] = kept(r.support.Arrays), kept(r.support.Tables)
	headers["probe_stream"] = r.support.Stream // declared for the probe, and deleted
	var warnings []string
	if !r.support.Arrays {
		warnings = append(warnings, warnArrays)
	}
	if !r.support.Tables {
		warnings = append(warnings, warnTables)
	}
	if len(warnings) > 0 {
		d["warnings"] = warnings
	}
	return d
}

// probeHeaders finds out, once, whether the broker keeps array and table headers through
// a stream (consumer.Stream.ProbeHeaders, on a stream of the probe's own), and reports it:
// an error in the log where it drops them, herald_bus_headers_kept, and r for /readyz.
// A failed attempt is logged, counted and tried again with backoff until ctx ends. It does
// not hold the gateway's start: readiness does not wait for it.
func probeHeaders(ctx context.Context, probe func(context.Context) (consumer.HeaderSupport, error),
	log *slog.Logger, metrics *gateway.Metrics, r *headerReport) {
	delay := headerProbeRetryMin
	for {
		attempt, cancel := context.WithTimeout(ctx, headerProbeTimeout)
		hs, err := probe(attempt)
		cancel()
		if err != nil && ctx.Err() != nil {
			return
		}
		if err == nil || errors.Is(err, consumer.ErrProbeStreamLeft) {
			metrics.BusHeaderProbe(true)
			metrics.BusHeadersKept(hs.Arrays, hs.Tables)
			r.set("done", hs)
			if err != nil {
				metrics.BusHeaderProbe(false)
				log.Error("header probe: its stream was left behind; delete it", "stream", hs.Stream, "err", err)
			}
			if !hs.Arrays {
				log.Error(warnArrays, "probe_stream", hs.Stream)
			}
			if !hs.Tables {
				log.Warn(warnTables, "probe_stream", hs.Stream)
			}
			if hs.Arrays && hs.Tables {
				log.Info("the broker keeps array and table headers in streams", "probe_stream", hs.Stream)
			}
			return
		}
		metrics.BusHeaderProbe(false)
		r.set("failed", consumer.HeaderSupport{})
		log.Warn("header probe failed; trying again", "err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, headerProbeRetryMax)
	}
}
