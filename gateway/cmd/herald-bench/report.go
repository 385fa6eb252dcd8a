package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printResult writes a run's figures as a two-column table.
func printResult(w io.Writer, r Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(name, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{name}, args...)...)
	}
	row("regime", "%s (%s, transport %s, publisher %s)", r.Label, r.Target, r.Transport, r.Publisher)
	row("connections made / failed", "%d / %d of %d in %.1fs", r.ConnsMade, r.ConnsFailed, r.Conns, r.ConnectSecs)
	if len(r.ConnErrors) > 0 {
		row("connection errors", "%s", countsString(r.ConnErrors))
	}
	if r.Stalled > 0 {
		row("stalled connections", "%d of %d", r.StalledMade, r.Stalled)
	}
	if r.ServerPID > 0 {
		row("server pid", "%d", r.ServerPID)
		row("server RSS before / idle", "%d / %d KiB", r.RSSBeforeKiB, r.RSSIdleKiB)
		row("server RSS per idle connection", "%.2f KiB", r.RSSPerIdleConnKiB)
		row("server CPU per connect", "%.0f us", r.ServerCPUConnectUS)
	}
	if t := r.TailBefore; t != nil {
		row("tail at the baseline (cap)", "%d bytes = %.1f MiB, %d messages (cap %.1f MiB; filled in %.1fs)", t.Bytes, float64(t.Bytes)/(1<<20), t.Messages, float64(r.TailCapBytes)/(1<<20), r.TailFillSecs)
		if i := r.TailIdle; i != nil {
			row("tail with the connections idle", "%d bytes = %.1f MiB, %d messages", i.Bytes, float64(i.Bytes)/(1<<20), i.Messages)
		}
	}
	if b, i := r.GoMemBefore, r.GoMemIdle; b != nil && i != nil {
		row("Go heap in use / free unreleased / stacks", "before %d / %d / %d KiB, idle %d / %d / %d KiB",
			b.HeapInuseKiB, b.HeapFreeKiB, b.StackInuseKiB, i.HeapInuseKiB, i.HeapFreeKiB, i.StackInuseKiB)
	}
	if p := r.Phase; p != nil {
		row("rate", "%.0f msg/s x %d receivers = %.0f deliveries/s asked", p.Rate, p.Receivers, p.Rate*float64(p.Receivers))
		row("published: sent / accepted / errors", "%d / %d / %d (%.1f msg/s, at most %.1f ms behind)", p.Sent, p.Accepted, p.PublishErrors, p.PublishRate, p.PublisherBehind)
		if len(p.PublishErrKinds) > 0 {
			row("publish errors", "%s", countsString(p.PublishErrKinds))
		}
		row("deliveries: expected / received / lost", "%d / %d / %d (%.4f%% lost)", p.Expected, p.Received, p.Lost, 100*float64(p.Lost)/float64(max(p.Expected, 1)))
		if p.Dups > 0 {
			row("duplicated (or disordered) events", "%d", p.Dups)
		}
		if len(p.ReceiversEnded) > 0 {
			row("receivers ended early", "%s", countsString(p.ReceiversEnded))
		}
		row("steady-state window", "%.1fs, %d deliveries", p.WindowSecs, p.WindowDeliveries)
		row("deliveries/s", "%.0f", p.DeliveriesPerSec)
		l := p.Latency
		row("latency p50 / p90 / p99", "%.2f / %.2f / %.2f ms", l.P50Ms, l.P90Ms, l.P99Ms)
		row("latency p99.9 / max / mean", "%.2f / %.2f / %.2f ms", l.P999Ms, l.MaxMs, l.MeanMs)
		if r.ServerPID > 0 {
			row("server CPU", "%.2fs (%.0f%% of a core)", p.ServerCPUSecs, p.ServerCPUPercent)
			row("server CPU per delivery", "%.2f us", p.ServerCPUPerDelivUS)
			row("server RSS peak under load", "%d KiB", r.RSSPeakLoadKiB)
		}
		if p.WireBytesPerDeliv > 0 {
			row("bytes written per delivery", "%.1f (frames compressed in the window: %.0f)", p.WireBytesPerDeliv, p.CompressedFrames)
		}
		if p.DelivPerWrite > 0 {
			row("deliveries per socket write", "%.2f", p.DelivPerWrite)
		}
		row("tool CPU", "%.2fs (%.0f%% of a core), %.2f us per delivery", p.ToolCPUSecs, p.ToolCPUPercent, p.ToolCPUPerDelivUS)
		row("machine busy (all cores = 100%)", "%.0f%%, of which other processes %.0f%% of a core", p.MachineBusyPercent, p.OtherCPUPercent)
		if p.Profile != "" {
			row("CPU profile", "%s", p.Profile)
		}
		if p.Breakdown != nil {
			row("p99 breakdown", "%s", p.Breakdown)
		}
	}
	for _, w := range r.Warnings {
		row("warning", "%s", w)
	}
	tw.Flush()
}

func countsString(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
